#!/usr/bin/env bash
# A shortened CIFAR-10 study that fits a 2-core CPU in about an hour: the cifar10-mae-tiny and
# cifar10-imae-tiny presets (ViT-Tiny/4) on 1,000 training images per class, 15 + 8 epochs instead of
# 1000 + 400, base lr 1e-3 instead of 1.5e-4 (few epochs need a larger step); then separability,
# linear probe and kNN of both on 200 test images per class, the figures and the report.
# The numbers it produces are those of a heavily shortened run, not of the recipes.
#
#   IMAE_CIFAR10_DIR=/path/to/cifar10 bash studies/cifar10-short/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${IMAE_CIFAR10_DIR:-../shared/data/cifar10}
OUT=${OUT:-runs/cifar10-short}
IMAE=${IMAE:-imae}
TRAIN=(--data-path "$DATA" --set data.max_per_class=1000 --set train.blr=1e-3 --set train.save_every=5)
EVAL=(--set data.train_per_class=1000 --set data.eval_per_class=200)

$IMAE pretrain --preset cifar10-mae-tiny "${TRAIN[@]}" --epochs 15 --set train.warmup_epochs=2 \
  --output-dir "$OUT/mae" --resume auto
$IMAE pretrain --preset cifar10-imae-tiny "${TRAIN[@]}" --epochs 8 --set train.warmup_epochs=1 \
  --teacher "$OUT/mae" --init-from "$OUT/mae" --output-dir "$OUT/imae" --resume auto
for run in mae imae; do
  $IMAE separability "$OUT/$run" --reference "$OUT/mae" "${EVAL[@]}"
  $IMAE linprobe "$OUT/$run" "${EVAL[@]}"
  $IMAE knn "$OUT/$run" "${EVAL[@]}"
done
$IMAE figures "$OUT/imae" "$OUT/mae" "${EVAL[@]}"
$IMAE report "$OUT/mae" "$OUT/imae" --output-dir "$OUT/report"
python studies/collect.py "$OUT" studies/cifar10-short/results
