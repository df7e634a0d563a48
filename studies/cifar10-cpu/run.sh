#!/usr/bin/env bash
# The paper's three questions on real CIFAR-10 on this project's 2-core CPU, in about 2 hours: the arms
# of studies/lib.sh (a-g and an untrained encoder) from one teacher MAE, at matched compute with seeds.
# What is shortened (README.md here): a ViT of width 96 and depth 4 (decoder 64 x 2) on patch 4; the first
# 500 training images per class; teacher 50 epochs, each arm 16 more (cosine, blr 1e-3, batch 128).
# Evaluation (fixed before any arm was compared; never tuned per arm): token separability against the
# teacher on 2,000 test pairs with p = 1 from the test split, at the training mask ratio and unmasked; the
# linear probe and kNN fitted on the same 5,000 training images and scored on the full test split; NMI;
# then `imae compare` of (a) and (b) per seed, the report, the table and the training curves.
#
#   DATA=../shared/data/cifar10 OUT=$HOME/studies/cifar10-cpu bash studies/cifar10-cpu/run.sh   # resumable
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-${IMAE_CIFAR10_DIR:-../shared/data/cifar10}}
OUT=${OUT:-$HOME/studies/cifar10-cpu}
RESULTS=${RESULTS:-studies/cifar10-cpu/results}
MAE_PRESET=studies/cifar10-cpu/mae.yaml CONT_PRESET=studies/cifar10-cpu/mae-continued.yaml
IMAE_PRESET=studies/cifar10-cpu/imae.yaml
TEACHER_EPOCHS=50 EPOCHS=${EPOCHS:-16} IMAGES=4992  # 39 batches of 128 an epoch
TRAIN=(--data-path "$DATA")
EVAL=(--set data.train_per_class=500 --set separability.same_class_p=1.0 --set separability.unmasked=true)
source studies/lib.sh

study_all
