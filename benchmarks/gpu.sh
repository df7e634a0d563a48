#!/usr/bin/env bash
# The device run of issue 15 on one GPU (prepared for an H200; about 8 minutes, each part under its own
# time limit so that a slow part cannot take the others' time). Everything lands under $OUT:
#   nvidia-smi.txt, pytest-cuda.txt       the CUDA-marked tests
#   epoch-eval.{json,md,log}              one CIFAR-10 epoch (epoch time / sum of steps), extraction and kNN
#   steps-eager.{json,md,log}             MAE / i-MAE steps, tiny/4 B1024 and base/16 B128, bf16, + HF / lightly
#   steps-compile.{json,md,log}           the same with torch.compile
#   throughput-h200.{json,md}             all of it in one file (commit as benchmarks/results/)
# Usage: OUT=/some/dir [PYTHON=venv/bin/python] [IMAE_CIFAR10_DIR=...] benchmarks/gpu.sh [--dry-run]
#        (--dry-run: CPU, tiny sizes, checks the script; the default CIFAR-10 is shared/data/cifar10)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY="--dry-run"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export IMAE_CACHE_DIR="${IMAE_CACHE_DIR:-$(mktemp -d)}"
CIFAR10=${IMAE_CIFAR10_DIR:-}
for d in "$PWD/shared/data/cifar10" "$PWD/../shared/data/cifar10"; do
  [ -z "$CIFAR10" ] && [ -d "$d/train" ] && CIFAR10=$d
done
CIFAR=()
[ -n "$CIFAR10" ] && CIFAR=(--cifar10 "$CIFAR10") && export IMAE_CIFAR10_DIR=$CIFAR10
START=$(date +%s)
note() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$OUT/gpu.log"; }

note "start; cifar10=${CIFAR10:-none}"
if [ -z "$DRY" ]; then
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  timeout 60 "$PY" -m pytest -q -rs -m cuda tests > "$OUT/pytest-cuda.txt" 2>&1
  note "cuda tests: exit $? ($(tail -1 "$OUT/pytest-cuda.txt"))"
fi
timeout 120 "$PY" benchmarks/gpu_bench.py $DRY --out "$OUT" --tag epoch-eval --sections epoch,eval "${CIFAR[@]}" \
  > "$OUT/epoch-eval.log" 2>&1
note "epoch + eval: exit $?"
timeout 100 "$PY" benchmarks/gpu_bench.py $DRY --out "$OUT" --tag steps-eager --sections steps --compile off \
  > "$OUT/steps-eager.log" 2>&1
note "eager steps: exit $?"
if [ -z "$DRY" ]; then
  timeout 240 "$PY" benchmarks/gpu_bench.py --out "$OUT" --tag steps-compile --sections steps --compile on \
    --no-others > "$OUT/steps-compile.log" 2>&1
  note "compiled steps: exit $?"
fi
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
merged, md = {}, []
for tag in ("epoch-eval", "steps-eager", "steps-compile"):
    f = out / f"{tag}.json"
    if f.is_file():
        merged[tag] = json.loads(f.read_text())
        md.append(f"## {tag}\n\n" + (out / f"{tag}.md").read_text() if (out / f"{tag}.md").is_file() else "")
    else:
        merged[tag] = {"error": "no result (timed out or crashed; see its .log)"}
        md.append(f"## {tag}\n\nno result (timed out or crashed; see {tag}.log)\n")
(out / "throughput-h200.json").write_text(json.dumps(merged, indent=1))
(out / "throughput-h200.md").write_text("\n".join(md))
print((out / "throughput-h200.md").read_text())
PYEOF
note "done"
