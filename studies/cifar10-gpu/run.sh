#!/usr/bin/env bash
# The paper's scale, for one GPU: issue 26's design (studies/lib.sh: independent teachers, two referees, arms
# a, a+, b, d, e, h per teacher and c, f, g for the first, an untrained encoder) with the recipes' presets,
# unshortened. CIFAR-10 by default; DATASET=cifar100 or DATASET=tinyimagenet for the
# variants. The teacher is the MAE preset (CIFAR: ViT-Tiny/4, 1000 epochs; Tiny-ImageNet: ViT-S/8, 800);
# every arm trains the i-MAE preset's epochs from it (CIFAR: 400, Tiny-ImageNet: 200), arm (a) with the
# i-MAE preset's warm-up. It first times train steps on the GPU and prints the expected time per arm.
# Evaluation as in the CPU scales: token separability and the un-mixing gain against each referee on disjoint,
# class-independent test pairs; probe (one penalty per comparison), kNN and NMI on the full splits; compare per
# teacher and referee.
#
#   DATA=/path/to/cifar10 OUT=$HOME/studies/cifar10-gpu bash studies/cifar10-gpu/run.sh     # resumable
#   DATA=/path/to/tiny-imagenet-200 DATASET=tinyimagenet bash studies/cifar10-gpu/run.sh
#   PLAN_ONLY=1 ...                                                     # print the plan and estimate, stop
#   BUDGET_S=600 PLAN_ONLY=1 ...    # the largest version fitting 600 device seconds (at least a referee, two
#                                   # teachers, arms (a) and (b)), each run's time; MAE_IMG_S / IMAE_IMG_S to plan
#                                   # with given training images/s instead of steps timed on the GPU
set -euo pipefail
cd "$(dirname "$0")/../.."
DATASET=${DATASET:-cifar10}
case "$DATASET" in
  cifar10)      MAE_PRESET=cifar10-mae-tiny IMAE_PRESET=cifar10-imae-tiny TEACHER_EPOCHS=1000 EPOCHS=400 WARMUP=40 IMAGES=50000 ;;
  cifar100)     MAE_PRESET=cifar100-mae-tiny IMAE_PRESET=cifar100-imae-tiny TEACHER_EPOCHS=1000 EPOCHS=400 WARMUP=40 IMAGES=50000 ;;
  tinyimagenet) MAE_PRESET=tinyimagenet-mae-small IMAE_PRESET=tinyimagenet-imae-small TEACHER_EPOCHS=800 EPOCHS=200 WARMUP=20 IMAGES=100000 ;;
  *) echo "DATASET must be cifar10, cifar100 or tinyimagenet" >&2; exit 2 ;;
esac
: "${DATA:?set DATA to the data set folder (CIFAR: imae pretrain --download fetches it once)}"
OUT=${OUT:-$HOME/studies/$DATASET-gpu}
RESULTS=${RESULTS:-studies/cifar10-gpu/results-$DATASET}
CONT_PRESET="$MAE_PRESET --set train.warmup_epochs=$WARMUP"
TEACHER_EPOCHS=${TEACHER_EPOCHS_OVERRIDE:-$TEACHER_EPOCHS} EPOCHS=${EPOCHS_OVERRIDE:-$EPOCHS}
# shellcheck disable=SC2206
TRAIN=(--data-path "$DATA" --device cuda ${TRAIN_EXTRA:-})
EVAL=(--device cuda)
source studies/lib.sh

study_all
