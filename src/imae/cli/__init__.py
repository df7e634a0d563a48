"""The ``imae`` command: parse flags, resolve the configuration, call one function per subcommand.

Every training and evaluation command takes the same common flags (``--preset``, ``--data-path``,
``--download``, ``--output-dir``, ``--epochs``, ``--seed``, ``--device``, ``--set key=value``). Errors
a user can fix print one line (``imae: error: ...``) and exit with status 2; a stopped training run
(non-finite loss, failed write) exits with 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imae.cli.common import COMMANDS, add_common, command, common_overrides
from imae.errors import ImaeError

__all__ = ["COMMANDS", "add_common", "build_parser", "command", "common_overrides", "main"]


# ----------------------------------------------------------------------------------------------
# pretrain


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    add_common(p, preset_default="digits-mae",
               usage="--preset cifar10-mae-tiny --data-path ~/data/cifar10 --epochs 200 --set train.blr=1e-4")
    p.add_argument("--resume", metavar="RUN_DIR|CKPT|auto",
                   help="continue a run: its directory, a checkpoint, or 'auto' (the newest complete "
                        "checkpoint in --output-dir, else start fresh)")
    p.add_argument("--init-from", metavar="CKPT", help="start from these weights (ours or an official MAE .pth)")
    p.add_argument("--teacher", metavar="RUN_DIR|CKPT", help="i-MAE: the frozen MAE teacher to distil from")
    p.add_argument("--skip-corrupt", action="store_true", default=None, help="skip unreadable images (counted)")
    p.add_argument("--skip-nonfinite", type=int, metavar="N", help="skip up to N updates whose loss is NaN/inf")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")


@command("pretrain", "pre-train a vanilla MAE or an i-MAE")(_pretrain_args)
def cmd_pretrain(args: argparse.Namespace) -> Path:
    from imae.config import build_config, parse_set
    from imae.engine.train import pretrain
    from imae.runtime.distributed import launched_rank_is_zero

    overrides = common_overrides(args)
    extra = {"init_from": args.init_from, "data.skip_corrupt": args.skip_corrupt,
             "train.skip_nonfinite": args.skip_nonfinite, "train.compile": args.compile,
             "imae.teacher": args.teacher}
    overrides.update({k: v for k, v in extra.items() if v is not None})
    overrides.update(parse_set(s) for s in args.sets)
    cfg = build_config(args.preset, overrides)
    # when resuming, the run's saved configuration applies and only the flags given here change it
    run_dir = pretrain(cfg, resume=args.resume, overrides=overrides)
    if launched_rank_is_zero():  # under torchrun every rank returns here; one line of output, not N
        print(run_dir)
    return run_dir


# ----------------------------------------------------------------------------------------------
# quickstart: the README's main command


def _quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="runs/quickstart", help="folder for the runs and the report "
                                                                   "(default runs/quickstart)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--epochs", type=int, help="epochs of each pre-training (default: the digits presets')")


@command("quickstart", "the embedded default on bundled digits (no download): pre-train MAE and i-MAE, "
                       "evaluate both, write the report; a few minutes on a CPU")(_quickstart_args)
def cmd_quickstart(args: argparse.Namespace) -> Path:
    from imae.quickstart import run

    return run(Path(args.output_dir), device=args.device, epochs=args.epochs)


# ----------------------------------------------------------------------------------------------
# export


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="CKPT", help="a run directory, .pth or .safetensors checkpoint (ours or an "
                                                "official MAE's), or a Hugging Face ViTMAE folder")
    p.add_argument("--to", required=True, choices=["hf", "timm", "mae"],
                   help="hf: a folder for transformers' ViTMAEForPreTraining.from_pretrained (ViTMAEModel for an "
                        "encoder-only input); timm: the encoder as a timm ViT state dict (.safetensors, plus a "
                        ".timm.json with the timm.create_model call); mae: an official-layout MAE .pth. For an "
                        "i-MAE checkpoint, hf and mae hold its encoder and shared decoder with the dominant "
                        "branch as decoder_embed (the subordinate one for imae.branches=sub)")
    p.add_argument("--output", required=True, metavar="PATH", help="the folder (hf) or file to write; must not exist")
    p.add_argument("--num-heads", type=int, help="encoder heads of an official checkpoint of a non-standard width")


@command("export", "write a checkpoint as a Hugging Face ViTMAE folder, a timm ViT (.safetensors) or an "
                   "official MAE .pth")(_export_args)
def cmd_export(args: argparse.Namespace) -> list[Path]:
    from imae.export import export

    paths = export(args.ckpt, args.to, args.output, num_heads=args.num_heads)
    for p in paths:
        print(p)
    if args.to == "timm":
        import json

        print(json.loads(paths[1].read_text())["python"])
    return paths


# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from imae import __version__
    from imae.cli import evaluate as _eval_commands  # noqa: F401  (registers the evaluation subcommands)

    parser = argparse.ArgumentParser(prog="imae", description="i-MAE: interactive Masked Autoencoders")
    parser.add_argument("--version", action="version", version=f"imae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, fn) in COMMANDS.items():
        # argparse %-formats help strings (not descriptions): a literal "95%" would break `imae --help`
        p = sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    try:
        args.func(args)
    except ImaeError as e:
        _close_bars()  # else the message lands on the line of an unfinished progress bar
        print(f"imae: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _close_bars()
        print("imae: interrupted", file=sys.stderr)
        sys.exit(130)


def _close_bars() -> None:
    from imae.console import close_bars

    close_bars()
