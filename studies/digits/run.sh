#!/usr/bin/env bash
# The paper's three questions on the embedded digits (16 px, no download), at matched compute with seeds:
# the arms of studies/lib.sh (a-g and an untrained encoder), from one teacher MAE (digits-mae, 30 epochs),
# each arm 30 more epochs on the same training split; (a) and (b) for seeds 0 1 2.
# Evaluation (fixed before any arm was compared; never tuned per arm): token separability against the
# teacher on pairs with p = 1, at the training mask ratio and unmasked; linear probe, kNN and NMI; then
# `imae compare` of (a) and (b) per seed, the report, the table and the training curves.
#
#   OUT=$HOME/studies/digits bash studies/digits/run.sh          # resumable: finished steps are skipped
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$HOME/studies/digits}
RESULTS=${RESULTS:-studies/digits/results}
MAE_PRESET=digits-mae CONT_PRESET=digits-mae-continued IMAE_PRESET=digits-imae
TEACHER_EPOCHS=30 EPOCHS=${EPOCHS:-30} IMAGES=1408  # 22 batches of 64 an epoch
TRAIN=()
EVAL=(--preset digits-mae --set separability.same_class_p=1.0 --set separability.unmasked=true)
source studies/lib.sh

study_all
