"""The README's main command: the whole pipeline on the embedded ``digits`` data set, on a CPU in minutes.

1. pre-train a vanilla MAE (``digits-mae``, 30 epochs, seed 0): the teacher and the common starting point;
2. the **referee**: the same recipe with seed 1, the reference every model is scored against; none of the
   compared models is trained towards it or starts from it (about 40 s);
3. from the teacher, for the same 20 epochs each: the compute-matched control, the MAE continued
   (``digits-mae-continued``), and the i-MAE (``digits-imae``: the teacher is its frozen target);
4. evaluate the teacher, the continued MAE and the i-MAE on the digits test split (360 images) against the
   referee: the un-mixing gain (alphas 0.1, 0.3, 0.45; mask ratios 0.75 and 0; 72 / 36 / 72 disjoint
   fit / validation / test pairs, partners independent of class) with its baselines and 95% bootstrap
   intervals, and the linear probe with one penalty for all (chosen on the referee's training digits);
   ``imae compare`` of the continued MAE and the i-MAE; the figures; ``report.html`` and ``report.md``;
5. print the table, the i-MAE minus MAE-continued difference in gain with its interval, and the report's path.
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
REFEREE_SEED = 1


def run(out: Path, device: str = "auto", epochs: int | None = None) -> dict[str, Path]:
    """Train, evaluate and report under ``out``; returns the run directories and the report's path."""
    common = {"device": device}
    if epochs:
        common["train.epochs"] = epochs

    def train(preset: str, name: str, **over: Any) -> Path:
        run_dir = pretrain(build_config(preset, {**common, "output_dir": str(out / name), **over}), resume="auto",
                           overrides=common)
        if stopped(run_dir):  # a signal stopped this stage: the next must not start from a half-trained run
            info(f"quickstart stopped during {name}; run the same command again to continue")
            raise SystemExit(0)
        info(f"{name} run directory: {run_dir}")
        return run_dir

    mae_dir = train("digits-mae", "mae")
    referee_dir = train("digits-mae", "referee", seed=REFEREE_SEED)
    cont_dir = train("digits-mae-continued", "mae-continued", init_from=str(mae_dir))
    imae_dir = train("digits-imae", "imae", **{"imae.teacher": str(mae_dir), "init_from": str(mae_dir)})
    report = evaluate_runs(mae_dir, cont_dir, imae_dir, referee_dir, out, device)
    print(f"MAE:   {mae_dir}\nreferee: {referee_dir}\nMAE continued: {cont_dir}\ni-MAE: {imae_dir}")
    return {"mae": mae_dir, "referee": referee_dir, "mae_continued": cont_dir, "imae": imae_dir, "report": report}


def evaluate_runs(mae_dir: Path, cont_dir: Path | None, imae_dir: Path, referee_dir: Path, out: Path,
                  device: str = "auto") -> Path:
    """Separability (the referee as every run's reference) and linear probe (one penalty: the referee's) of each
    run, the comparison of the i-MAE with the continued MAE (or, without one, the teacher), the figures and the
    report under ``out``; prints the table and the difference. Returns report.html's path."""
    from imae.checkpoints import latest_in
    from imae.eval.run import compare_checkpoints, evaluate
    from imae.eval.separability_result import SeparabilityResult
    from imae.viz.figures import make_figures
    from imae.viz.report import write_report

    referee = latest_in(referee_dir)  # resolved once: every step scores against the same file
    named = [("MAE (teacher)", mae_dir)] + ([("MAE continued", cont_dir)] if cont_dir else []) + [("i-MAE", imae_dir)]
    ckpts = {name: latest_in(d) for name, d in named}
    over = {"device": device, **QUICK_SETS}
    info(f"choosing the linear probe's one penalty on the referee's training digits ({referee})")
    l2 = evaluate("linprobe", referee, overrides=over)["results"]["l2"]
    rows = []
    for name, ck in ckpts.items():
        info(f"evaluating {ck} on the digits test split (360 images) against the referee")
        sep = evaluate("separability", ck, reference=str(referee), overrides=over)["results"]
        # the probe at every encoder block (the report's depth figure); its last block is the table's probe
        lin = evaluate("linprobe", ck, overrides={**over, "linprobe.l2": l2, "features.layers": "all"})["results"]
        rows.append(_row(name, SeparabilityResult.from_json(sep), lin))
    base_name = "MAE continued" if cont_dir else "MAE (teacher)"
    cmp = compare_checkpoints(ckpts[base_name], ckpts["i-MAE"], reference=str(referee), overrides=over)["results"]
    make_figures([ckpts["i-MAE"], ckpts["MAE (teacher)"]], overrides=over)
    paths = write_report([d for _, d in named], out, reference=referee)
    head = rows[0]["head"]
    print("\n" + _table(rows, head["alpha"], l2))
    d = cmp["metrics"]["gain_sub"][head["alpha"]]
    lo, hi = d["ci"]
    verdict = ("its interval lies above 0" if lo > 0 else "its interval lies below 0" if hi < 0
               else "its interval includes 0: no difference shown")
    print(f"\ni-MAE minus {base_name} (same pairs and masks, reference: the referee): un-mixing gain of the "
          f"subordinate at α={head['alpha']} {d['diff']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] on "
          f"{cmp['pairs']['test']} disjoint test pairs; {verdict}.")
    print(f"gain: R² of the referee's {head['space']}-space tokens of the clean subordinate from the model's tokens "
          f"of the masked mixture (mask ratio {head['ratio']}), minus R² from its tokens of the dominant image alone; "
          f"partners drawn independently of class; linear probe at one l2 ({l2:g}, chosen on the referee's "
          f"training digits): 1437 training / 360 test digits")
    print(f"report: {paths['html']}")
    return paths["html"]


def stopped(run: Path) -> bool:
    """Whether the run's last event in log.jsonl is a stop by a signal (its training did not finish)."""
    import json

    log = run / "log.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines() if '"event"' in line] if log.is_file() else []
    events = [e for e in events if e.get("kind") == "event"]
    return bool(events) and events[-1].get("event") == "stopped"


def _row(name: str, sep, lin: dict[str, Any]) -> dict[str, Any]:
    h = sep.headline()
    return {"model": name, "head": sep.head, **h, "linprobe": lin["top1"]}


def _table(rows: list[dict[str, Any]], alpha: str, l2: float) -> str:
    head = ["model", f"gain(sub) α={alpha} [95% CI]", "R² mixture", "R² partner alone", "pixels gain",
            "random-init gain", f"linear probe top-1 (l2 {l2:g})"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        lo, hi = r["gain_ci"]
        lines.append(f"| {r['model']} | {r['gain']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {r['r2_mixture']:.3f} | "
                     f"{r['r2_partner']:.3f} | {r['pixels_gain']:+.3f} | {r['random_init_gain']:+.3f} | "
                     f"{r['linprobe']:.3f} |")
    return "\n".join(lines)
