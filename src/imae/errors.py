"""Errors a user can act on. The command line prints them as one line, without a traceback."""

from __future__ import annotations

import reprlib
from typing import Any


class ImaeError(Exception):
    """Base class: the message says what went wrong and what to do. ``exit_code`` is the process status."""

    exit_code = 2


class ConfigError(ImaeError):
    """A preset, flag or configuration value that cannot be used."""


class DataError(ImaeError):
    """A data set that is missing, empty, corrupt or does not fit the model."""


class CheckpointError(ImaeError):
    """A checkpoint that is missing, unreadable, untrusted or of another architecture."""


class MissingDependency(ImaeError):
    """An optional package that the asked-for feature needs is not installed; the message names the extra."""


class TrainingError(ImaeError):
    """Training stopped: a non-finite loss, a failed checkpoint write, a lost peer process."""

    exit_code = 1


class OutputError(ImaeError):
    """An output file (report, figure) that cannot be written: a full disk, a read-only folder. Earlier
    outputs of the same name are left as they were."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 6, 8, 8, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def short(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, built without expanding the whole value: what every
    configuration error prints, so that a huge or deeply shared value never becomes a huge message."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
