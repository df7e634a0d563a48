#!/usr/bin/env python
"""Does ``torch.compile`` pay back on a CPU within a run? Compile time against the step time it saves.

    python benchmarks/compile_payback.py                 # the quickstart's model and a CIFAR-10 epoch's
    python benchmarks/compile_payback.py --cases digits   # one of them

For each case (a model and batch of a real run, and the number of optimiser steps that run takes), in one
process: an eager step and a compiled step (``torch.compile`` of the same objective's model, as ``train.compile``
does) are built; the compiled one's first calls (tracing and code generation, from a fresh inductor cache unless
``--warm-cache``: what a first run on a machine pays) are timed as the compile cost; then both run interleaved
for ``--rounds`` rounds and the medians give the saving per step. It pays within the run when
``compile_s < steps x (eager_s - compiled_s)``; ``payback_steps`` is the break-even. Steps run in the precision
``imae.runtime.precision`` picks for this CPU. Writes ``benchmarks/results/compile-payback-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import make_objectives, make_step  # noqa: E402  (this folder's benchmark)

from imae.runtime import precision  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# name: (model, batch, optimiser steps of the run it stands for, what that run is)
CASES = {
    "digits": ("mae_vit_micro_patch2", 64, 22 * 30,
               "the quickstart's longest run (30 digits epochs of 22 steps; each of its four runs compiles anew)"),
    "cifar10": ("mae_vit_tiny_patch4", 256, 50000 // 256, "one CIFAR-10 epoch of cifar10-mae-tiny (batch 256)"),
}


def bench(name: str, rounds: int, tmp: Path) -> dict:
    model, batch, run_steps, what = CASES[name]
    cpu = torch.device("cpu")
    amp = precision.uses_bf16(cpu)
    eager = make_step(make_objectives(model, cpu, tmp)["mae"], cpu, batch, amp)
    compiled = make_step(make_objectives(model, cpu, tmp)["mae"], cpu, batch, amp, compile=True)
    eager()  # warm
    t = time.perf_counter()
    compiled()
    first = time.perf_counter() - t
    t = time.perf_counter()
    compiled()
    second = time.perf_counter() - t
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for k, f in (("eager", eager), ("compiled", compiled)):
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    compile_s = first + second - 2 * c  # the first two calls beyond two ordinary compiled steps
    saving = e - c
    payback = compile_s / saving if saving > 0 else None  # None: it never pays (compiled is not faster)
    out = {"case": name, "model": model, "batch_size": batch, "precision": precision.name(cpu, amp), "run": what,
           "run_steps": run_steps, "compile_s": compile_s, "eager_step_s": e, "compiled_step_s": c,
           "speedup": e / c, "payback_steps": payback, "pays_within_run": payback is not None and payback < run_steps,
           "net_saving_s": run_steps * saving - compile_s, "step_s_all": times}
    print(f"{name}: compile {compile_s:.1f} s, eager {e:.3f} s/step, compiled {c:.3f} s/step (x{e / c:.2f}); pays "
          f"back after {'never' if payback is None else f'{payback:.0f}'} steps of the run's {run_steps}: "
          f"{'yes' if out['pays_within_run'] else 'no'}",
          flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="digits,cifar10")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int)
    p.add_argument("--note", help="a note stored with the results (e.g. that the CPU was shared)")
    p.add_argument("--out", default=str(RESULTS / "compile-payback-cpu.json"))
    p.add_argument("--warm-cache", action="store_true",
                   help="keep inductor's compile cache (default: a fresh one, as a first run on a new machine sees)")
    args = p.parse_args()
    cache = None
    if not args.warm_cache:  # before inductor reads its settings: every compile starts cold
        cache = tempfile.mkdtemp(prefix="imae-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    if args.threads:
        torch.set_num_threads(args.threads)
    res = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "command": " ".join(sys.argv),
           "threads": torch.get_num_threads(), "inductor_cache": "warm" if args.warm_cache else "fresh (cold compile)",
           "note": args.note, "cases": []}
    with tempfile.TemporaryDirectory() as tmpd:
        for c in args.cases.split(","):
            res["cases"].append(bench(c, args.rounds, Path(tmpd)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
