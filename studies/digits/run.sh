#!/usr/bin/env bash
# The paper's three questions on the embedded digits (16 px, no download), at matched compute with seeds.
#
# One teacher MAE (digits-mae, 30 epochs); from it every arm trains EPOCHS more epochs on the same data:
#   a  MAE continued (the compute-matched control)            digits-mae-continued
#   b  i-MAE, two branches, distillation, p = 1 (the preset)  digits-imae
#   c  b without distillation                                 imae.distill=false
#   d  b with p = 0 (never same-class partners)               imae.same_class_p=0
#   e  b with p = random (the preset already uses 1)          imae.same_class_p=random
#   f  b with the subordinate branch only                     imae.branches=sub
#   g  the unmixed-input MAE of the paper's Figure 3          imae.same_class_p=self, imae.distill=false
# (a) and (b) for every seed of SEEDS, the rest for the first seed (ALL_SEEDS=1: every seed). Beside them an
# untrained encoder of the same architecture. Every arm is evaluated with the same, fixed settings (below):
# token separability against the teacher on pairs with p = 1, the linear probe, kNN and NMI; then
# `imae compare` of (a) and (b) per seed, the report and the tables.
#
#   OUT=$HOME/studies/digits bash studies/digits/run.sh          # resumable: finished steps are skipped
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$HOME/studies/digits}
IMAE=${IMAE:-imae}
PY=${PY:-python}
EPOCHS=${EPOCHS:-30}
SEEDS=${SEEDS:-"0 1 2"}
FIRST=${SEEDS%% *}
# fixed before any arm was compared; never tuned per arm
EVAL=(--reference "$OUT/teacher" --set separability.same_class_p=1.0 --set separability.unmasked=true)

arms() {  # name preset extra-sets...
  echo "a mae-continued digits-mae-continued"
  echo "b imae digits-imae"
  echo "c imae-nodistill digits-imae --set imae.distill=false"
  echo "d imae-p0 digits-imae --set imae.same_class_p=0"
  echo "e imae-prandom digits-imae --set imae.same_class_p=random"
  echo "f imae-sub digits-imae --set imae.branches=sub"
  echo "g mae-unmixed digits-imae --set imae.same_class_p=self --set imae.distill=false"
}

runs=()
while read -r tag name preset extra; do
  for seed in $SEEDS; do
    if [[ "$tag" != a && "$tag" != b && "$seed" != "$FIRST" && -z "${ALL_SEEDS:-}" ]]; then continue; fi
    runs+=("$tag-$name-s$seed|$preset|$seed|$extra")
  done
done < <(arms)
echo "plan: teacher (digits-mae, 30 epochs), then ${#runs[@]} arms of $EPOCHS epochs each from it, under $OUT"
# measured on the 2-core CPU: ~4.5 s per i-MAE epoch (MAE less), ~1 min per evaluated run
echo "estimated time on a 2-core CPU: about $(( 2 + ${#runs[@]} * EPOCHS * 9 / 120 + ${#runs[@]} + 1 )) minutes"

$IMAE pretrain --preset digits-mae --output-dir "$OUT/teacher" --resume auto
teacher_init=(--init-from "$OUT/teacher")
for r in "${runs[@]}"; do
  IFS='|' read -r name preset seed extra <<<"$r"
  teach=()
  [[ "$preset" == digits-imae ]] && teach=(--teacher "$OUT/teacher")
  # shellcheck disable=SC2086
  $IMAE pretrain --preset "$preset" --output-dir "$OUT/$name" --seed "$seed" --epochs "$EPOCHS" \
    "${teacher_init[@]}" "${teach[@]}" $extra --resume auto
done
$PY studies/untrained.py digits-mae "$OUT/untrained"

for dir in "$OUT"/untrained "${runs[@]%%|*}"; do
  d=$dir; [[ "$d" == /* ]] || d="$OUT/$d"
  [[ -f "$d/eval/separability.json" ]] || $IMAE separability "$d" "${EVAL[@]}" --preset digits-mae
  [[ -f "$d/eval/semantics.json" ]] || $IMAE semantics "$d" --reference "$OUT/teacher" --preset digits-mae
done
for seed in $SEEDS; do
  [[ -f "$OUT/b-imae-s$seed/eval/compare.json" ]] || \
    $IMAE compare "$OUT/a-mae-continued-s$seed" "$OUT/b-imae-s$seed" "${EVAL[@]}"
done
$IMAE report "$OUT"/teacher "$OUT"/untrained "$OUT"/[a-g]-* --output-dir "$OUT/report"
$PY studies/collect.py "$OUT" studies/digits/results
$PY studies/table.py studies/digits/results > studies/digits/results/table.md
