#!/usr/bin/env python
"""Copy the small, citable outputs of finished runs into a study folder that is committed.

    python studies/collect.py runs/quickstart studies/digits-quickstart

For every run directory under SRC (any folder holding config.yaml): its config.yaml, the epoch records
of log.jsonl (as epochs.jsonl), every JSON (rewritten without indentation) and PNG (under 1 MB) below its
eval/ folder and its eval-referee-s<R>/ folders (a study of independent teachers: one per referee, with the
comparisons under them) and its fine-tune's finetune.json (RUN/finetune/, the run's fine-tuning for claim 2;
not collected as a run); plus report.md, headline.png and report.html (under 1 MB; a larger page is left for
`imae report` to rebuild) found under SRC; and SRC's plan.txt (the plan, with the train steps timed when the
study last started), eval-times.tsv (each evaluation's wall time, studies/lib.sh) and study-code.txt (the
commits the study ran, where recorded).
Checkpoints and feature caches are never copied.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

MAX_BYTES = 1_000_000


def collect(src: Path, dst: Path) -> list[Path]:
    copied = []
    dst.mkdir(parents=True, exist_ok=True)
    for cfg in sorted(src.rglob("config.yaml")):
        run = cfg.parent
        if any(part.startswith(("eval", "finetune")) for part in run.parts[len(src.parts):]):
            continue
        out = dst / run.relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(cfg, out / "config.yaml")
        log = run / "log.jsonl"
        if log.exists():
            epochs = [line for line in log.read_text().splitlines() if json.loads(line).get("kind") == "epoch"]
            (out / "epochs.jsonl").write_text("\n".join(epochs) + "\n")
        evals = [d for d in sorted(run.iterdir()) if d.is_dir() and d.name.startswith("eval")]
        files = [f for d in evals for f in sorted(d.rglob("*"))] + sorted(run.glob("finetune/finetune.json"))
        for f in files:
            if f.suffix in (".json", ".png") and f.stat().st_size < MAX_BYTES:
                target = out / f.relative_to(run)
                target.parent.mkdir(parents=True, exist_ok=True)
                if f.suffix == ".json":  # the same values without indentation: about 40% of the bytes
                    target.write_text(json.dumps(json.loads(f.read_text()), separators=(",", ":")) + "\n")
                else:
                    shutil.copy(f, target)
        copied.append(out)
    for name in ("report.md", "report.html", "headline.png"):
        for f in src.rglob(name):
            if f.stat().st_size < MAX_BYTES:
                target = dst / f.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, target)
                copied.append(target)
    for name in ("plan.txt", "eval-times.tsv", "study-code.txt"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
            copied.append(dst / name)
    return copied


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    for p in collect(Path(sys.argv[1]), Path(sys.argv[2])):
        print(p)
