"""Result files: every evaluation writes ``<output dir>/<command>.json``.

Schema (all commands)::

    {"command": "separability" | "semantics" | "linprobe" | "knn" | "finetune",
     "version": imae version,
     "checkpoint": {"path", "label", "kind": "mae" | "imae", "epoch", "official_layout", "arch": {...},
                    "heads_from": {"num_heads": how it was decided, "decoder_num_heads": ...}},
     "data": {"dataset", "img_size", "mean", "std", "train_images", "eval_images", "num_classes"},
     "config": the resolved configuration,
     "results": the numbers (per command; see docs/evaluation.md),
     "timing": {"extract_s", "fit_s", ...}}

``results`` depends only on the inputs (rerunning gives the same numbers); ``timing`` does not.
Non-finite numbers are written as null.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from imae import __version__
from imae.atomic import write_atomic, write_reason
from imae.errors import ConfigError, ImaeError

COMMANDS = ("separability", "semantics", "linprobe", "knn", "finetune", "compare")


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_result(out_dir: Path, command: str, record: dict[str, Any]) -> Path:
    """Write ``{"command", "version", **record}`` to ``out_dir/<command>.json`` (atomically)."""
    out_dir = make_output_dir(out_dir)
    path = out_dir / f"{command}.json"
    text = json.dumps(_clean({"command": command, "version": __version__, **record}), indent=2) + "\n"
    try:
        write_atomic(path, text)
    except OSError as e:  # a full disk or a read-only folder: the previous result file stays as it was
        raise ImaeError(f"cannot write {path} ({write_reason(e)}); "
                        f"{'the previous one is intact; ' if path.exists() else ''}free space or choose another "
                        f"--output-dir") from None
    return path


def make_output_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output folder {out_dir} ({e.strerror})") from None
    return out_dir


class Result(dict):
    """A result record (the dict: what its file holds) and ``path``, the file it was written to or read from."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        super().__init__(record)
        self.path = Path(path)


def read_results(folder: Path) -> dict[str, Result]:
    """The result files under ``folder`` (searched recursively), by command; unreadable files are skipped."""
    found: dict[str, Result] = {}
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and obj.get("command") in COMMANDS and "results" in obj:
            found.setdefault(obj["command"], Result(path, obj))
    return found
