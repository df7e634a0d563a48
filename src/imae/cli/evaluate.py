"""Evaluation subcommands of the ``imae`` command line (registered with ``imae.cli.command``).

Each parses its flags and calls one function: :func:`imae.eval.run.evaluate`,
:func:`imae.finetune.finetune`, :func:`imae.viz.figures.make_figures` or
:func:`imae.viz.report.write_report`.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

from imae.cli.common import add_common, command, common_overrides
from imae.errors import ConfigError


def overrides_from_args(args, command: str, epochs_key: str | None) -> dict[str, Any]:
    """The common flags as dotted keys; ``--epochs`` only where the command trains for epochs; ``--layers``
    where the command has it."""
    if epochs_key is None and getattr(args, "epochs", None) is not None:
        raise ConfigError(f"--epochs has no meaning for `imae {command}`")
    out = common_overrides(args, epochs_key or "unused")
    if getattr(args, "layers", None) is not None:
        out["features.layers"] = args.layers
    if getattr(args, "head", None) is not None:
        out["probe.head"] = args.head
    return out


def _ckpt(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="CKPT", help="a checkpoint file (ours or an official MAE .pth) or a run directory")


# what each command's help offers: --epochs only where it trains for epochs, a --set example it understands,
# and an example command line
_HELP = {
    "separability": dict(epochs=None, example="separability.alphas=[0.3]"),
    "semantics": dict(epochs=None, example="semantics.kmeans_restarts=3"),
    "linprobe": dict(epochs="epochs of the full protocol (with --set linprobe.mode=full)",
                     example="linprobe.mode=full"),
    "knn": dict(epochs=None, example="knn.k=10"),
    "finetune": dict(epochs="fine-tuning epochs", example="finetune.blr=1e-3"),
    "figures": dict(epochs=None, example="figures.images=8"),
}


def _common(p: argparse.ArgumentParser, command: str | None) -> None:
    h = _HELP.get(command, dict(epochs=None, example="data.eval_per_class=100"))
    usage = f"runs/c10-imae --set {h['example']}"
    if command in ("separability", "semantics"):  # an i-MAE is scored against a referee
        usage = f"runs/c10-imae --reference runs/c10-referee --set {h['example']}"
    if command == "finetune":
        usage = f"runs/c10-imae --preset finetune/cifar10-tiny --epochs 100 --set {h['example']}"
    add_common(p, output_default="an eval/ folder inside the run directory", usage=usage, **h)
    if command in ("separability", "semantics", "linprobe", "knn"):
        add_layers(p)
    if command in ("semantics", "linprobe"):
        add_head(p)


def add_layers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", metavar="last|all|K,...",
                   help="the encoder blocks measured: last (default: the encoder's output), all, or a list such as "
                        "2,4,last; each block's output with the final norm applied; one result entry per block")


def add_head(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", choices=("linear", "attentive"),
                   help="probe heads: linear (default), or attentive: also the attentive probe (learned queries "
                        "over the frozen tokens, then a linear classifier), reported beside the linear probe")


def _with_reference(p: argparse.ArgumentParser, command: str | None = None) -> None:
    _ckpt(p)
    p.add_argument("--reference", metavar="CKPT",
                   help="the referee whose tokens are the targets: an MAE the evaluated model was not trained "
                        "towards (e.g. the teacher's recipe with another seed); required for an i-MAE (naming its "
                        "teacher is allowed and labelled so); default for an MAE: itself")
    _common(p, command)


def _plain(p: argparse.ArgumentParser, command: str | None = None) -> None:
    _ckpt(p)
    _common(p, command)


def _evaluate(args: argparse.Namespace, name: str, epochs_key: str | None) -> Path:
    from imae.eval.run import evaluate

    record = evaluate(name, args.ckpt, reference=getattr(args, "reference", None), preset=args.preset,
                      overrides=overrides_from_args(args, name, epochs_key), sets=args.sets)
    print(record.path)
    return record.path


@command("separability", "linear separability of mixtures' latents: the un-mixing gain (R^2 from the mixture minus "
                         "from the partner alone) and classification per alpha")(
    partial(_with_reference, command="separability"))
def cmd_separability(args: argparse.Namespace) -> Path:
    return _evaluate(args, "separability", None)


@command("semantics", "linear probe, kNN, k-means NMI, and separability of same- vs different-class pairs")(
    partial(_with_reference, command="semantics"))
def cmd_semantics(args: argparse.Namespace) -> Path:
    return _evaluate(args, "semantics", None)


@command("linprobe", "MAE's linear probe (cached fast path, or --set linprobe.mode=full)")(
    partial(_plain, command="linprobe"))
def cmd_linprobe(args: argparse.Namespace) -> Path:
    return _evaluate(args, "linprobe", "linprobe.epochs")


@command("knn", "weighted kNN accuracy (k=20, cosine, T=0.07) on frozen features")(partial(_plain, command="knn"))
def cmd_knn(args: argparse.Namespace) -> Path:
    return _evaluate(args, "knn", None)


def _finetune_args(p: argparse.ArgumentParser) -> None:
    _plain(p, "finetune")
    p.add_argument("--resume", metavar="RUN_DIR|CKPT|auto",
                   help="continue a stopped fine-tune: its directory, one of its checkpoints, or 'auto' (the "
                        "output folder's fine-tune if there is one, else start fresh); its saved configuration "
                        "applies, flags given here change it")


@command("finetune", "fine-tune a timm ViT built from the encoder (layer decay, mixup/cutmix, RandAugment)")(
    _finetune_args)
def cmd_finetune(args: argparse.Namespace) -> Path:
    from imae.eval.run import main_process
    from imae.finetune import finetune

    run_dir = finetune(args.ckpt, preset=args.preset, overrides=overrides_from_args(args, "finetune",
                                                                                    "finetune.epochs"),
                       sets=args.sets, resume=args.resume)
    if main_process():
        print(run_dir)
    return run_dir


def _figures_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpts", metavar="CKPT", nargs="+", help="checkpoints or run directories (the first one's data "
                                                            "set is used; side by side in the ablation grid)")
    _common(p, "figures")


@command("figures", "PNG figures: mixtures across alpha, ablation grid, mask ratios, weights and attention")(
    _figures_args)
def cmd_figures(args: argparse.Namespace) -> list[Path]:
    from imae.viz.figures import make_figures

    paths = make_figures(args.ckpts, preset=args.preset, overrides=overrides_from_args(args, "figures", None),
                         sets=args.sets)
    for p in paths:
        print(p)
    return paths


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run directories (their eval/ results and figures)")
    p.add_argument("--output-dir", help="where to write report.html, report.md and headline.png (default: the "
                                        "run's eval/ folder; for several runs, report/ in their common parent folder)")
    p.add_argument("--reference", metavar="CKPT",
                   help="the referee every run's separability must have been scored against; a run scored against "
                        "another reference (e.g. its own teacher) is flagged with the command that rescores it")


@command("report", "one self-contained HTML page (and a Markdown table) comparing runs")(_report_args)
def cmd_report(args: argparse.Namespace) -> Path:
    from imae.viz.report import write_report

    paths = write_report([Path(r) for r in args.runs], Path(args.output_dir) if args.output_dir else None,
                         args.reference)
    print(paths["html"])
    return paths["html"]


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A", help="the baseline checkpoint or run directory (e.g. the compute-matched MAE)")
    p.add_argument("b", metavar="B", help="the checkpoint compared with it (e.g. the i-MAE)")
    p.add_argument("--reference", metavar="CKPT",
                   help="the one referee both are scored against (required): an MAE neither was trained towards "
                        "nor started from, e.g. the teacher's recipe with another seed; naming the teacher is "
                        "allowed and the output says so")
    add_common(p, output_default="B's eval/ folder", epochs=None, example="separability.alphas=[0.3]",
               usage="runs/c10-mae-continued runs/c10-imae --set separability.alphas=[0.3]")
    add_layers(p)
    add_head(p)


@command("compare", "B minus A on identical pairs, masks and test images, with paired-bootstrap 95% intervals")(
    _compare_args)
def cmd_compare(args: argparse.Namespace) -> Path:
    from imae.eval.run import compare_checkpoints

    record = compare_checkpoints(args.a, args.b, reference=args.reference, preset=args.preset,
                                 overrides=overrides_from_args(args, "compare", None), sets=args.sets)
    print(record.path)
    return record.path
