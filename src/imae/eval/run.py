"""Run one evaluation of a checkpoint end to end: load it, resolve the configuration, load the data,
compute, write ``<output dir>/<command>.json``. The command line and the quickstart call :func:`evaluate`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imae.config import Config as PretrainConfig
from imae.config import preset_label, preset_tree, resolve
from imae.config.evaluate import RUN_DATA_KEYS, EvalConfig
from imae.console import info
from imae.errors import ConfigError
from imae.eval.eval_split import Split, load_eval_split
from imae.eval.features import FeatureCache
from imae.eval.item_store import ItemStore
from imae.eval.results import Result, write_result
from imae.eval.separability_result import SeparabilityResult
from imae.eval.subject import Subject, load_reference, load_subject, separability_defaults
from imae.models.loading import HeadCountUnknown
from imae.runtime.distributed import launched_rank_is_zero, resolve_device

EVALUATIONS = ("separability", "semantics", "linprobe", "knn")


def main_process() -> bool:
    """Progress bars and messages on rank 0 only (evaluation itself runs in one process)."""
    return launched_rank_is_zero()


def resolve_config(cls: type, subject: Subject | None, preset: str | None = None,
                   overrides: dict[str, Any] | None = None, sets: list[str] | None = None,
                   base: dict[str, Any] | None = None) -> Any:
    """defaults <- the run's data set, path and image size <- preset <- flags (dotted keys) <- ``--set`` items.

    ``base``: a whole saved configuration (a fine-tune being resumed) in place of the first three."""
    if base is not None:
        return resolve(copy.deepcopy(base), overrides, sets, cls)
    tree: dict[str, Any] = {}
    run_data = ((subject.train_config if subject is not None else None) or {}).get("data") or {}
    tree["data"] = {k: copy.deepcopy(run_data[k]) for k in RUN_DATA_KEYS if run_data.get(k) is not None}
    if preset:
        for key, value in preset_tree(preset, cls, foreign=PretrainConfig).items():
            if isinstance(value, dict) and isinstance(tree.get(key), dict):
                tree[key] = {**tree[key], **value}
            else:
                tree[key] = value
        tree["preset"] = preset_label(preset)
    return resolve(tree, overrides, sets, cls)


@dataclass
class Session:
    """Everything an evaluation of one checkpoint needs."""

    subject: Subject
    cfg: EvalConfig
    device: torch.device
    cache: FeatureCache
    out_dir: Path
    show_progress: bool
    warned_one_class: bool = False

    @property
    def item_store(self) -> ItemStore:
        """Per-item separability scores, beside the feature cache and switched with it (``features.cache``)."""
        return ItemStore(self.cache.folder.parent / "separability", self.cache.enabled)

    def split(self, which: str) -> Split:
        split = load_eval_split(self.cfg.data, which, self.subject.model.arch.img_size, self.show_progress)
        present = split.labels.unique() if which == "eval" and split.has_labels else None
        if present is not None and len(present) == 1 and not self.warned_one_class:
            self.warned_one_class = True
            d = split.data
            what = ("probe and kNN accuracy and NMI are 1.000 whatever the model" if d.num_classes == 1 else
                    f"the scores measure that class only, of {d.num_classes}, and NMI means nothing")
            info(f"warning: every evaluation image of {d.name} is of one class ({d.classes[int(present[0])]}): "
                 f"{what}; evaluate on two or more classes", self.show_progress)
        return split

    def describe_data(self, test: Split, train: Split | None = None) -> dict[str, Any]:
        d = test.data
        out = {"dataset": d.name, "img_size": test.size, "mean": list(d.mean), "std": list(d.std),
               "eval_images": len(test), "num_classes": d.num_classes}
        if train is not None:
            out["train_images"] = len(train)
        return out


def open_session(ckpt: str | Path, *, preset: str | None = None, overrides: dict[str, Any] | None = None,
                 sets: list[str] | None = None, cls: type = EvalConfig, move: bool = True,
                 base: dict[str, Any] | None = None) -> Session:
    """Load ``ckpt``, resolve the configuration (see ``resolve_config``), and (``move``) put the model on the
    configured device."""
    try:
        subject: Subject | None = load_subject(ckpt)
    except HeadCountUnknown:  # an official layout of a non-standard width: --set num_heads=N says it (or is asked for)
        subject = None
    cfg = resolve_config(cls, subject, preset, overrides, sets, base)
    if subject is None or (cfg.num_heads and cfg.num_heads != subject.model.arch.num_heads):
        subject = load_subject(ckpt, cfg.num_heads)
    device = resolve_device(cfg.device)
    if move:
        subject.model.to(device)
    features = getattr(cfg, "features", None)
    cache = FeatureCache.from_config(features.cache if features else False, features.cache_dir if features else None)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else subject.default_output_dir
    return Session(subject, cfg, device, cache, out_dir, main_process())


def evaluate(command: str, ckpt: str | Path, *, reference: str | None = None, preset: str | None = None,
             overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> Result:
    """Run ``command`` (separability | semantics | linprobe | knn) on ``ckpt``; returns the written record
    (a :class:`~imae.eval.results.Result`: the record, and ``.path`` where it was written)."""
    if command not in EVALUATIONS:
        raise ValueError(f"unknown evaluation {command!r}; available: {', '.join(EVALUATIONS)}")
    s = open_session(ckpt, preset=preset, overrides=overrides, sets=sets)
    cfg = s.cfg
    if command == "linprobe" and cfg.linprobe.mode == "cached" and "linprobe.epochs" in (overrides or {}):
        raise ConfigError("--epochs applies to the full protocol (--set linprobe.mode=full); the cached fast path "
                          "fits the head to convergence (linprobe.max_iter)")
    kw = dict(device=s.device, cache=s.cache, show_progress=s.show_progress)
    train = None
    if command == "separability":
        from imae.eval.pairs import make_pairs
        from imae.eval.separability import run_separability

        test = s.split("eval")
        ref = _reference(s, reference)
        separability_defaults(cfg, s.subject)
        pairs = make_pairs(test.labels, cfg.separability.fractions, cfg.separability.same_class_p, cfg.seed,
                           cfg.separability.max_images)
        out = run_separability(s.subject, ref, test, pairs, cfg, device=s.device, show_progress=s.show_progress,
                               store=s.item_store)
    elif command == "semantics":
        from imae.eval.semantics import run_semantics

        train, test = s.split("train"), s.split("eval")
        separability_defaults(cfg, s.subject)
        ref = _reference(s, reference) if cfg.semantics.separability else s.subject  # no reference read without it
        out = run_semantics(s.subject, ref, train, test, cfg, **kw)
    elif command == "linprobe":
        from imae.eval.linprobe import run_linprobe

        train, test = s.split("train"), s.split("eval")
        out = run_linprobe(s.subject, train, test, cfg, **kw)
    else:
        train, test = s.split("train"), s.split("eval")
        from imae.eval.knn import run_knn

        out = run_knn(s.subject, train, test, cfg, **kw)
    record = {"checkpoint": s.subject.describe(), "data": s.describe_data(test, train), "config": cfg.to_dict(),
              **out}
    path = write_result(s.out_dir, command, record)
    info(f"{command}: {headline(command, record['results'])}", s.show_progress)
    info(f"{command}: wrote {path}", s.show_progress)
    return Result(path, record)


def compare_checkpoints(a: str | Path, b: str | Path, *, reference: str | None = None, preset: str | None = None,
                        overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> Result:
    """``imae compare``: B minus A on identical pairs, masks and test images (see :mod:`imae.eval.compare`).
    Writes ``compare.json`` (default: B's eval/ folder) and returns the record (a Result, ``.path`` the file)."""
    from imae.eval.compare import compare, format_table

    s = open_session(a, preset=preset, overrides=overrides, sets=sets)
    if not (overrides or {}).get("output_dir"):
        s.out_dir = load_subject(b, s.cfg.num_heads).default_output_dir
    results = compare(s, b, reference or s.cfg.separability.reference, s.cfg)
    record = {"checkpoint": results["b"], "data": s.describe_data(s.split("eval")), "config": s.cfg.to_dict(),
              "results": results, "timing": {}}
    path = write_result(s.out_dir, "compare", record)
    if s.show_progress:
        print(format_table(results))
    info(f"compare: wrote {path}", s.show_progress)
    return Result(path, record)


def headline(command: str, results: dict[str, Any]) -> str:
    """The numbers a user wants on the terminal, in one line."""
    def ci(entry: dict[str, Any], key: str) -> str:
        lo, hi = entry.get("ci") or (None, None)
        return f"{entry[key]:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")

    att = results.get("attentive")
    att = f", attentive probe top-1 {att['top1']:.3f}" if att else ""
    where = f" (block {results['layer']} of {results['depth']}; every block in the file)" if "layers" in results else ""
    if command in ("linprobe", "knn"):
        return " ".join(f"{k} {results[k]:.3f}" for k in ("top1", "top5") if results.get(k) is not None) + att + where
    if command == "semantics":
        return (f"linear probe top-1 {results['linprobe']['top1']:.3f}{att}, kNN top-1 {results['knn']['top1']:.3f}, "
                f"NMI {results['nmi']:.3f}{where}")
    return separability_line(SeparabilityResult.from_json(results)) + where


def separability_line(r: SeparabilityResult) -> str:
    """The un-mixing gain at the headline alpha with its interval, the two R^2 it is the difference of, the
    trivial predictors' gains and the reference's role."""
    def num(v, fmt="+.3f"):
        return "n/a" if v is None else format(v, fmt)

    h = r.headline()
    lo, hi = h["gain_ci"]
    parts = [f"un-mixing gain ({h['source']}, α={h['alpha']}, mask {h['ratio']}) {num(h['gain'])} "
             f"[{num(lo)}, {num(hi)}] = R² from the mixture {num(h['r2_mixture'], '.3f')} - from the partner alone "
             f"{num(h['r2_partner'], '.3f')}"]
    parts += [f"{name} gain {num(h[f'{name}_gain'])}" for name in ("pixels", "random_init")
              if h[f"{name}_gain"] is not None]
    parts.append(f"reference {h['reference']}" + (f" ({h['reference_note']})" if h["reference_note"] else ""))
    return "; ".join(parts)


def _reference(s: Session, explicit: str | None) -> Subject:
    ref = load_reference(s.subject, explicit or s.cfg.separability.reference, s.cfg.num_heads)
    ref.model.to(s.device)
    return ref

