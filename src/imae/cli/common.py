"""What every ``imae`` subcommand shares: the command registry and the common flags.

It sits below both sides of the CLI: ``imae.cli`` (the parser, pre-training, quickstart, export) and
``imae.cli.evaluate`` (the evaluation commands) register here and read the same flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], Any]]] = {}


def command(name: str, help: str):
    """Register ``fn(args)`` as subcommand ``name``; ``add_args(parser)`` adds its own flags."""

    def wrap(add_args):
        def register(fn):
            COMMANDS[name] = (help, add_args, fn)
            return fn

        return register

    return wrap


def add_common(p: argparse.ArgumentParser, preset_default: str | None = None,
               output_default: str = "runs/<preset>-<timestamp>", epochs: str | None = "number of epochs",
               example: str = "train.blr=1e-4", usage: str | None = None) -> None:
    """The common flags. ``epochs``: the help of ``--epochs``, or None where the command has no epochs (unlisted);
    ``example``: a ``--set`` item that this command understands; ``usage``: an example command line (the
    help's last line)."""
    g = p.add_argument_group("common options")
    g.add_argument("--preset", default=preset_default, help="configuration preset (configs/<name>.yaml) or a YAML path")
    g.add_argument("--data-path", help="folder holding the data set")
    g.add_argument("--download", action="store_true", default=None, help="download CIFAR through torchvision")
    g.add_argument("--output-dir", help=f"where to write (default: {output_default})")
    # a command without epochs still takes --epochs, unlisted, to say in one line that it means nothing there
    g.add_argument("--epochs", type=int, help=epochs or argparse.SUPPRESS)
    g.add_argument("--seed", type=int, help="random seed")
    g.add_argument("--device", help="auto, cpu or cuda")
    g.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override any configuration field, e.g. --set {example} (repeatable)")
    if usage:
        p.epilog = f"example: {p.prog} {usage}"


def common_overrides(args: argparse.Namespace, epochs_key: str = "train.epochs") -> dict[str, Any]:
    """The common flags that were given, as dotted configuration keys."""
    pairs = {"data.path": args.data_path, "data.download": args.download, "output_dir": args.output_dir,
             epochs_key: getattr(args, "epochs", None), "seed": args.seed, "device": args.device}
    return {k: v for k, v in pairs.items() if v is not None}
