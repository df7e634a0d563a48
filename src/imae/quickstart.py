"""The README's main command: the whole pipeline on the embedded ``digits`` data set, on a CPU in minutes.

1. pre-train a vanilla MAE (``digits-mae``, 30 epochs): the teacher and the common starting point;
2. from it, for the same 20 epochs each: the compute-matched control, the MAE continued
   (``digits-mae-continued``), and the i-MAE (``digits-imae``: the MAE is its frozen teacher);
3. evaluate all three on the digits test split (360 images) against one reference, the teacher:
   token-level separability (alphas 0.1, 0.3, 0.45; mask ratios 0.75 and 0; 144 / 72 / 144 fit /
   validation / test pairs, the i-MAE's same-class pairing), with its baselines and 95% bootstrap
   intervals, and the linear probe;
   ``imae compare`` of the continued MAE and the i-MAE; the figures; ``report.html`` and ``report.md``;
4. print the table, the i-MAE minus MAE difference with its interval, and the report's path.
Each training step resumes if its run directory already holds a checkpoint, so an interrupted quickstart
continues; features are cached, so a rerun evaluates in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imae.config import build_config
from imae.console import info
from imae.engine.train import pretrain

QUICK_ALPHAS = (0.1, 0.3, 0.45)  # of the five, to keep the evaluation short on a 2-core CPU
QUICK_SETS = {"separability.alphas": list(QUICK_ALPHAS), "separability.unmasked": True, "figures.images": 3}
HEADLINE = "0.3"


def run(out: Path, device: str = "auto", epochs: int | None = None) -> dict[str, Path]:
    """Train, evaluate and report under ``out``; returns the run directories and the report's path."""
    common = {"device": device}
    if epochs:
        common["train.epochs"] = epochs

    def train(preset: str, name: str, **over: str) -> Path:
        run_dir = pretrain(build_config(preset, {**common, "output_dir": str(out / name), **over}), resume="auto",
                           overrides=common)
        if stopped(run_dir):  # a signal stopped this stage: the next must not start from a half-trained run
            info(f"quickstart stopped during {name}; run the same command again to continue")
            raise SystemExit(0)
        info(f"{name} run directory: {run_dir}")
        return run_dir

    mae_dir = train("digits-mae", "mae")
    cont_dir = train("digits-mae-continued", "mae-continued", init_from=str(mae_dir))
    imae_dir = train("digits-imae", "imae", **{"imae.teacher": str(mae_dir), "init_from": str(mae_dir)})
    report = evaluate_runs(mae_dir, cont_dir, imae_dir, out, device)
    print(f"MAE:   {mae_dir}\nMAE continued: {cont_dir}\ni-MAE: {imae_dir}")
    return {"mae": mae_dir, "mae_continued": cont_dir, "imae": imae_dir, "report": report}


def evaluate_runs(mae_dir: Path, cont_dir: Path | None, imae_dir: Path, out: Path, device: str = "auto") -> Path:
    """Separability (the teacher ``mae_dir`` as every run's reference) and linear probe of each run, the
    comparison of the i-MAE with the continued MAE (or, without one, the teacher), the figures and the
    report under ``out``; prints the table and the difference. Returns report.html's path."""
    from imae.engine.checkpoint import latest_in
    from imae.eval.run import compare_checkpoints, evaluate
    from imae.viz.figures import make_figures
    from imae.viz.report import write_report

    teacher = latest_in(mae_dir)  # resolved once: every step scores the same files
    named = [("MAE (teacher)", mae_dir)] + ([("MAE continued", cont_dir)] if cont_dir else []) + [("i-MAE", imae_dir)]
    ckpts = {name: latest_in(d) for name, d in named}
    p = _training_p(imae_dir)
    over = {"device": device, **QUICK_SETS, "separability.same_class_p": p}
    rows = []
    for name, ck in ckpts.items():
        info(f"evaluating {ck} on the digits test split (360 images)")
        sep = evaluate("separability", ck, reference=str(teacher), overrides=over)["results"]
        lin = evaluate("linprobe", ck, overrides=over)["results"]
        rows.append(_row(name, sep, lin))
    base = ckpts.get("MAE continued", teacher)
    cmp = compare_checkpoints(base, ckpts["i-MAE"], reference=str(teacher), overrides=over)["results"]
    make_figures([ckpts["i-MAE"], teacher], overrides=over)
    paths = write_report([d for _, d in named], out)
    print("\n" + _table(rows))
    d = cmp["metrics"]["token_r2_sub"][HEADLINE]
    lo, hi = d["ci"]
    print(f"\ni-MAE minus {'MAE continued' if cont_dir else 'MAE'} (same pairs and masks, reference: the teacher): "
          f"token R²(sub) at α={HEADLINE} {d['diff']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] on "
          f"{cmp['pairs']['test']} test pairs; "
          + ("the interval excludes 0." if lo > 0 or hi < 0 else "the interval includes 0: no difference shown."))
    print(f"token R²: ridge from the mixture's tokens (cls + visible patches, mask ratio {cmp['mask_ratio']:g}) to the "
          f"teacher's distillation-space tokens of the clean subordinate; pairs same-class with p={p}; "
          f"superposition line {rows[0]['superposition']:.3f}; linear probe: 1437 training / 360 test digits")
    print(f"report: {paths['html']}")
    return paths["html"]


def stopped(run: Path) -> bool:
    """Whether the run's last event in log.jsonl is a stop by a signal (its training did not finish)."""
    import json

    log = run / "log.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines() if '"event"' in line] if log.is_file() else []
    events = [e for e in events if e.get("kind") == "event"]
    return bool(events) and events[-1].get("event") == "stopped"


def _training_p(run: Path) -> Any:
    import yaml

    p = (yaml.safe_load((run / "config.yaml").read_text()).get("imae") or {}).get("same_class_p", "random")
    return p if isinstance(p, str) else float(p)


def _row(name: str, sep: dict[str, Any], lin: dict[str, Any]) -> dict[str, Any]:
    block = sep["tokens"][sep["ratios"][0]]
    space = "distill" if "distill" in block["encoder"] else "encoder"
    sub = block["encoder"][space]["sub"][HEADLINE]
    return {"model": name, "r2": sub["r2"], "ci": sub["ci"],
            "pixels": block["baselines"]["pixels"][space]["sub"][HEADLINE]["r2"],
            "random_init": block["baselines"]["random_init"][space]["sub"][HEADLINE]["r2"],
            "sum": block["encoder"][space]["sum"][HEADLINE]["r2"],
            "superposition": sep["superposition"][HEADLINE]["sub"], "linprobe": lin["top1"]}


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["model", f"token R²(sub) α={HEADLINE} [95% CI]", "R² sum", "pixels", "random init", "linear probe top-1"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['r2']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {r['sum']:.3f} | "
                     f"{r['pixels']:.3f} | {r['random_init']:.3f} | {r['linprobe']:.3f} |")
    return "\n".join(lines)
