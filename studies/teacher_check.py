#!/usr/bin/env python
"""Which is the cheaper way to a teacher that learned: more epochs or more images (issue 26)?

    python studies/teacher_check.py OUT --runs preset epochs100 images1000 [--write results/teacher-check.json]

Reads each run ``OUT/<name>`` (``log.jsonl``: epochs, images per epoch, training seconds; ``eval/semantics.json``:
the linear probe) and the untrained encoder ``OUT/untrained``. Every probe is read at one penalty, the first
run's own choice (``check_start.probe``), and its gain over the untrained encoder's is printed beside the
training images seen and the training minutes (the sum of the epochs' ``time_s``; the CPU may have been shared).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_start import _linprobe, probe  # noqa: E402


def training(run: Path) -> dict:
    """{"epochs", "images_per_epoch", "images_seen", "train_min", "final_loss"} from the run's epoch records."""
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    recs = [r for r in recs if r.get("kind") == "epoch"]
    last = {r["epoch"]: r for r in recs}  # a resumed epoch is logged again: keep its last record
    epochs = sorted(last.values(), key=lambda r: r["epoch"])
    return {"epochs": len(epochs), "images_per_epoch": int(epochs[-1]["images"]),
            "images_seen": int(sum(r["images"] for r in epochs)),
            "train_min": round(sum(r["time_s"] for r in epochs) / 60, 1), "final_loss": round(epochs[-1]["loss"], 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args(argv)
    l2 = float(_linprobe(args.out / args.runs[0])["l2"])
    base = probe(args.out / "untrained", l2)
    rows = {}
    for name in args.runs:
        top1 = probe(args.out / name, l2)
        rows[name] = {**training(args.out / name), "probe": round(top1, 4), "gain": round(top1 - base, 4)}
        r = rows[name]
        print(f"{name}: {r['epochs']} epochs x {r['images_per_epoch']} images ({r['images_seen']} seen, "
              f"{r['train_min']} min): probe {top1:.3f}, {r['gain']:+.3f} over the untrained encoder's {base:.3f}")
    if args.write:
        args.write.write_text(json.dumps({"l2": l2, "untrained_probe": round(base, 4), "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
