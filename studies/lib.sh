# The steps every scale of issue 11's study runs; sourced by studies/<scale>/run.sh, which sets:
#   OUT            where the runs go (outside the work tree; resumable: finished steps are skipped)
#   RESULTS        the committed folder the small outputs are collected into (studies/<scale>/results;
#                  the scripts take RESULTS from the environment too)
#   MAE_PRESET     the teacher's preset; IMAE_PRESET the i-MAE arms'; CONT_PRESET arm (a)'s (MAE continued)
#   TEACHER_EPOCHS, EPOCHS (each arm), SEEDS ("0 1 2"), IMAGES (training images per epoch, for the estimate)
#   TRAIN          array of flags every training run gets (data path, model and schedule overrides)
#   EVAL           array of flags every evaluation gets; fixed before any arm is compared, never tuned per arm
#   IMAE, PY       the commands (defaults: imae, python)
# Arms (issue 11): all from the one teacher, EPOCHS more epochs on the same data:
#   a  MAE continued (the compute-matched control)   b  i-MAE, two branches, distillation, the preset's p
#   c  b without distillation                        d  b with p = 0
#   e  b with p = random (the presets use p = 1)     f  b with the subordinate branch only
#   g  the unmixed-input MAE of the paper's Figure 3 (p = self, no distillation)
# (a) and (b) run for every seed, the others for the first seed (ALL_SEEDS=1: every seed). Beside them
# an untrained encoder of the same architecture.

IMAE=${IMAE:-imae}
PY=${PY:-python}
SEEDS=${SEEDS:-"0 1 2"}

study_arms() {  # tag name preset extra-sets...
  echo "a mae-continued $CONT_PRESET"
  echo "b imae $IMAE_PRESET"
  echo "c imae-nodistill $IMAE_PRESET --set imae.distill=false"
  echo "d imae-p0 $IMAE_PRESET --set imae.same_class_p=0"
  echo "e imae-prandom $IMAE_PRESET --set imae.same_class_p=random"
  echo "f imae-sub $IMAE_PRESET --set imae.branches=sub"
  echo "g mae-unmixed $IMAE_PRESET --set imae.same_class_p=self --set imae.distill=false"
}

study_runs() {  # fills RUNS with "name|preset|seed|extra" (and the flags study_flags finds)
  study_flags
  local first=${SEEDS%% *} tag name preset extra seed
  RUNS=()
  while read -r tag name preset extra; do
    for seed in $SEEDS; do
      if [[ "$tag" != a && "$tag" != b && "$seed" != "$first" && -z "${ALL_SEEDS:-}" ]]; then continue; fi
      RUNS+=("$tag-$name-s$seed|$preset|$seed|$extra")
    done
  done < <(study_arms)
}

study_plan() {  # prints the plan and the time expected from train steps timed here first
  local n_mae=0 n_imae=0 r
  for r in "${RUNS[@]}"; do
    if [[ "$r" == a-* ]]; then n_mae=$((n_mae + 1)); else n_imae=$((n_imae + 1)); fi
  done
  echo "plan: teacher ($MAE_PRESET, $TEACHER_EPOCHS epochs), then ${#RUNS[@]} arms of $EPOCHS epochs each from it" \
       "(seeds $SEEDS), an untrained encoder, and $(( ${#RUNS[@]} + 1 )) evaluations; under $OUT"
  $PY studies/estimate.py --mae "$MAE_PRESET" --imae "$IMAE_PRESET" --images "$IMAGES" \
    --teacher-epochs "$TEACHER_EPOCHS" --epochs "$EPOCHS" --arms "$n_mae mae $n_imae imae" \
    "${DEVICE_FLAGS[@]}" "${SET_FLAGS[@]}"
}

study_flags() {  # SET_FLAGS: the --set pairs of TRAIN; DEVICE_FLAGS: its --device pair
  local i
  SET_FLAGS=() DEVICE_FLAGS=()
  for ((i = 0; i < ${#TRAIN[@]}; i++)); do
    [[ "${TRAIN[$i]}" == --set ]] && SET_FLAGS+=(--set "${TRAIN[$((i + 1))]}")
    [[ "${TRAIN[$i]}" == --device ]] && DEVICE_FLAGS+=(--device "${TRAIN[$((i + 1))]}")
  done
  return 0
}

study_train() {
  local r name preset seed extra teach
  $IMAE pretrain --preset "$MAE_PRESET" "${TRAIN[@]}" --epochs "$TEACHER_EPOCHS" --output-dir "$OUT/teacher" \
    --resume auto
  for r in "${RUNS[@]}"; do
    IFS='|' read -r name preset seed extra <<<"$r"
    teach=()
    [[ "$preset" == "$IMAE_PRESET" ]] && teach=(--teacher "$OUT/teacher")
    # shellcheck disable=SC2086
    $IMAE pretrain --preset "$preset" "${TRAIN[@]}" --output-dir "$OUT/$name" --seed "$seed" --epochs "$EPOCHS" \
      --init-from "$OUT/teacher" "${teach[@]}" $extra --resume auto
  done
  $PY studies/untrained.py "$MAE_PRESET" "$OUT/untrained" "${TRAIN[@]}"  # the same architecture and data
}

study_evaluate() {
  local d seed
  for d in "$OUT/untrained" "${RUNS[@]%%|*}"; do
    [[ "$d" == /* ]] || d="$OUT/$d"
    [[ -f "$d/eval/separability.json" ]] || $IMAE separability "$d" --reference "$OUT/teacher" "${EVAL[@]}"
    [[ -f "$d/eval/semantics.json" ]] || $IMAE semantics "$d" --reference "$OUT/teacher" "${EVAL[@]}"
  done
  # the teacher's semantics: where every arm starts (its separability is the reference-on-mixture baseline)
  [[ -f "$OUT/teacher/eval/semantics.json" ]] || $IMAE semantics "$OUT/teacher" --reference "$OUT/teacher" "${EVAL[@]}"
  for seed in $SEEDS; do
    [[ -f "$OUT/b-imae-s$seed/eval/compare.json" ]] || \
      $IMAE compare "$OUT/a-mae-continued-s$seed" "$OUT/b-imae-s$seed" --reference "$OUT/teacher" "${EVAL[@]}"
  done
}

study_publish() {
  $IMAE report "$OUT"/teacher "$OUT"/untrained "$OUT"/[a-g]-* --output-dir "$OUT/report"
  mkdir -p "$RESULTS"
  $PY studies/collect.py "$OUT" "$RESULTS"
  $PY studies/table.py "$RESULTS" > "$RESULTS/table.md"
  $PY studies/curves.py "$RESULTS"
  $PY studies/figure.py "$RESULTS"
  $PY studies/claims.py "$RESULTS"
}

study_all() {  # the whole study; PLAN_ONLY=1 prints the plan and the estimate (also to $OUT/plan.txt), then stops
  study_runs
  mkdir -p "$OUT"
  study_plan | tee "$OUT/plan.txt"
  [[ -n "${PLAN_ONLY:-}" ]] && return 0
  study_train
  study_evaluate
  study_publish
}
