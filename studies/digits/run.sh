#!/usr/bin/env bash
# The paper's three questions on the embedded digits (16 px, no download), issue 26's design (studies/lib.sh):
# three teachers (digits-mae, 30 epochs, seeds 0 1 2) trained independently, two referees trained the same way
# (seeds 4 5: every evaluation's references, no arm's start; referee s3 failed the start check, its probe 0.894
# against the teachers' 0.932 at one penalty, so seed 5 replaced it: README.md here); per teacher, from its weights, 30 more epochs of
# (a) MAE continued, (a+) MAE continued for (b)'s training FLOPs, (b) i-MAE, (d) p = 0, (e) p = random,
# (h) MAE continued with the teacher's distillation on clean images; (c), (f), (g) for teacher 0.
# Evaluation (fixed before any arm was compared; never tuned per arm): token separability and the un-mixing gain
# against each referee on disjoint, class-independent test pairs, at the training mask ratio and unmasked; linear
# probe, kNN and NMI once; `imae compare` per teacher and referee; arms (a) and (b) of every teacher fine-tuned
# 15 epochs (finetune/digits, claim 2's fine-tuning top-1); claims by the rules of studies/claims.py.
#
#   OUT=$HOME/studies/digits bash studies/digits/run.sh          # resumable: finished steps are skipped
#   PLAN_ONLY=1 ... (the plan and estimate)    DRY_RUN=1 ... (print every command, run none)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$HOME/studies/digits}
RESULTS=${RESULTS:-studies/digits/results}
MAE_PRESET=digits-mae CONT_PRESET=digits-mae-continued IMAE_PRESET=digits-imae
TEACHER_EPOCHS=30 EPOCHS=${EPOCHS:-30} IMAGES=1408  # 22 batches of 64 an epoch
REFEREE_SEEDS=${REFEREE_SEEDS:-"4 5"}
FINETUNE_PRESET=finetune/digits FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-15}
TRAIN=()
EVAL=(--preset digits-mae --set separability.unmasked=true)
JOBS=${JOBS:-2}  # two runs side by side, one thread each: the small models use a core about as well as two
source studies/lib.sh

study_all
