# The steps every scale of the study runs (issue 26: independent teachers, referees, controls that separate
# mixing from distillation); sourced by studies/<scale>/run.sh, which sets:
#   OUT            where the runs go (outside the work tree; resumable: finished steps are skipped)
#   RESULTS        the committed folder the small outputs are collected into (studies/<scale>/results)
#   MAE_PRESET     the teachers' and referees' preset; IMAE_PRESET the i-MAE arms'; CONT_PRESET arm (a)'s
#   TEACHER_EPOCHS (teachers and referees), EPOCHS (each arm), IMAGES (training images per epoch, for the estimate)
#   TRAIN          array of flags every training run gets (data path, model and schedule overrides)
#   EVAL           array of flags every evaluation gets; fixed before any arm is compared, never tuned per arm
#   MIN_PROBE_GAIN optional: each teacher's linear probe must beat the untrained encoder's by this before any arm
#   FINETUNE_PRESET, FINETUNE_EPOCHS  optional: fine-tune the arms FINETUNE_ARMS ("a b") of every teacher this many
#                  epochs (claim 2 reads the last epoch's test top-1); unset: no fine-tuning (the plan says so)
# and may override:
#   TEACHER_SEEDS  ("0 1 2") the teachers, each trained independently from scratch: the unit of replication
#   REFEREE_SEEDS  ("3 4") two more MAEs trained the same way: every evaluation's references, no arm's teacher or
#                  start; each must reach the teachers' final loss within REFEREE_TOLERANCE (0.10: 10%)
#   ARMS           ("a ap b d e h") the arms of every teacher; FIRST_ARMS ("c f g") those of the first teacher only
#   IMAE, PY       the commands (defaults: imae, python); CALC the python of the quick helpers (FLOP ratio, checks)
#   JOBS           (1) runs at once: with JOBS > 1 each phase (teachers and referees; their evaluations; the arms;
#                  the separability and semantics evaluations; the comparisons; fine-tuning) runs up to JOBS commands
#                  side by side, each on THREADS (cores / JOBS) threads, its output in $OUT/logs/<name>.log; a
#                  failed one stops the study once its phase has ended. The small models of the CPU scales use one
#                  core about as well as two, so JOBS=2 nearly halves the wall time on this 2-core machine (two
#                  CIFAR-10 teachers side by side: 12-17 s an epoch each in their epochs.jsonl; one alone on two
#                  threads: 382 images/s, 13 s an epoch, in the first study's plan:
#                  git show f53cfb4:studies/cifar10-cpu/results/plan.txt)
#   DRY_RUN=1      print every command instead of running it (IMAE and PY become echo); PLAN_ONLY=1: the plan only
#   BUDGET_S       plan the largest version that fits this many device seconds (studies/budget.py: teachers,
#                  referees, arms and epochs, each run's time); MAE_IMG_S / IMAE_IMG_S: training images per
#                  second to plan with instead of timing steps on the device; TEACHER_WARMUP / ARM_WARMUP
#                  (set by it): the warm-up epochs of the shortened schedules
# Arms, each from its teacher's weights (seed = the teacher's), on the same data, EPOCHS more epochs:
#   a  MAE continued (the same images seen)     ap (a+) MAE continued for the training FLOPs of (b): the epochs
#   b  i-MAE, two branches, distillation, p = 1     round(EPOCHS x ratio), ratio from imae.models.flops (flops.py)
#   c  b without distillation                    d  b with p = 0
#   e  b with p = random                         f  b with the subordinate branch only
#   g  the unmixed-input MAE (p = self, no distillation)
#   h  MAE continued with the teacher's latent distillation on clean, unmixed images: the i-MAE path with
#      p = self (each image mixed with itself: the clean image) and one branch; its loss is the MAE loss plus
#      the distillation towards the teacher's tokens of the clean image under the same mask
# Beside them an untrained encoder of the same architecture. Run folders: teacher-s<T>, referee-s<R>,
# <tag>-<name>-t<T> (arm of teacher T), untrained. Evaluations: separability against each referee R in
# RUN/eval-referee-s<R>/, semantics once in RUN/eval/ (probe, kNN and NMI only: semantics.separability=false);
# `imae compare` per teacher and referee (it reads the per-item scores `imae separability` stored: no arm is
# measured twice): (a), (a+), (h) against (b) in b's eval-referee-s<R>/vs-<tag>/,
# (b) against (d) and (e) in their eval-referee-s<R>/vs-b/; against the first referee with the attentive probe
# beside the linear one (--head attentive: one setting for both models), which claim 2 reports beside its verdict.

if [[ -n "${DRY_RUN:-}" ]]; then IMAE=${IMAE:-echo imae} PY=${PY:-echo python}; fi
IMAE=${IMAE:-imae}
PY=${PY:-python}
CALC=${CALC:-python}
TEACHER_SEEDS=${TEACHER_SEEDS:-"0 1 2"}
REFEREE_SEEDS=${REFEREE_SEEDS:-"3 4"}
REFEREE_TOLERANCE=${REFEREE_TOLERANCE:-0.10}
ARMS=${ARMS-"a ap b d e h"}
FIRST_ARMS=${FIRST_ARMS-"c f g"}
FINETUNE_ARMS=${FINETUNE_ARMS-"a b"}
JOBS=${JOBS:-1}
THREADS=${THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}
JOB_FAILED=""  # the file the failed jobs of the current phase are named in

job() {  # name command...: runs the command now (JOBS=1, or a dry run), else in the background once fewer than
  local name=$1  # JOBS run, on THREADS threads, its output in $OUT/logs/<name>.log; `join_jobs` waits for them
  shift
  if (( JOBS <= 1 )) || [[ -n "${DRY_RUN:-}" ]]; then "$@"; return; fi
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done
  mkdir -p "$OUT/logs"
  [[ -n "$JOB_FAILED" ]] || JOB_FAILED=$(mktemp)
  echo "$(date +%H:%M:%S) start $name (output: $OUT/logs/$name.log)"
  (
    export OMP_NUM_THREADS=$THREADS
    trap 'rc=$?; if ((rc)); then echo "$name" >> "$JOB_FAILED"
          echo "$(date +%H:%M:%S) FAILED $name (exit $rc; see $OUT/logs/$name.log)" >&2
          else echo "$(date +%H:%M:%S) done $name"; fi' EXIT
    "$@" > "$OUT/logs/$name.log" 2>&1
  ) &
}

join_jobs() {  # waits for every job started by `job`; returns 1 (after all have ended) if any failed
  local failed=0
  wait
  if [[ -n "$JOB_FAILED" ]]; then
    [[ -s "$JOB_FAILED" ]] && failed=1
    rm -f "$JOB_FAILED"
    JOB_FAILED=""
  fi
  if ((failed)); then echo "a run failed (above): the study stops here; the same command resumes it" >&2; fi
  return $failed
}

timed() {  # kind command...: runs an evaluation and appends "kind seconds" (its wall time) to $OUT/eval-times.tsv,
  local kind=$1 t0=$SECONDS  # which the plan's evaluation estimate reads
  shift
  "$@"
  [[ -n "${DRY_RUN:-}" ]] || echo "$kind $((SECONDS - t0))" >> "$OUT/eval-times.tsv"
}

finetunes() {  # the fine-tuned arms' run folders, one per line (none without FINETUNE_EPOCHS)
  local t tag
  [[ -n "${FINETUNE_EPOCHS:-}" ]] || return 0
  for t in $TEACHER_SEEDS; do
    for tag in $FINETUNE_ARMS; do [[ " $ARMS " == *" $tag "* ]] && arm_dir "$tag" "$t"; done
  done
  return 0
}

study_arms() {  # tag name preset extra-sets...
  echo "a mae-continued $CONT_PRESET"
  echo "ap mae-flops $CONT_PRESET"
  echo "b imae $IMAE_PRESET"
  echo "c imae-nodistill $IMAE_PRESET --set imae.distill=false"
  echo "d imae-p0 $IMAE_PRESET --set imae.same_class_p=0"
  echo "e imae-prandom $IMAE_PRESET --set imae.same_class_p=random"
  echo "f imae-sub $IMAE_PRESET --set imae.branches=sub"
  echo "g mae-unmixed $IMAE_PRESET --set imae.same_class_p=self --set imae.distill=false"
  echo "h mae-distill $IMAE_PRESET --set imae.same_class_p=self --set imae.branches=sub"
}

arm_dir() {  # tag teacher-seed -> the arm's run folder
  local name
  name=$(study_arms | awk -v t="$1" '$1 == t {print $2}')
  echo "$OUT/$1-$name-t$2"
}

study_runs() {  # fills RUNS with "name|preset|seed|epochs|extra", FLOPS_LINE and FLOPS_EPOCHS
  study_flags
  local first=${TEACHER_SEEDS%% *} tag name preset extra t epochs
  FLOPS_LINE=$($CALC studies/flops.py --mae "$MAE_PRESET" --imae "$IMAE_PRESET" --epochs "$EPOCHS" "${SET_FLAGS[@]}")
  FLOPS_EPOCHS=${FLOPS_LINE##*= }
  RUNS=()
  for t in $TEACHER_SEEDS; do
    while read -r tag name preset extra; do
      if [[ " $ARMS " != *" $tag "* && ( "$t" != "$first" || " $FIRST_ARMS " != *" $tag "* ) ]]; then continue; fi
      epochs=$EPOCHS
      [[ "$tag" == ap ]] && epochs=$FLOPS_EPOCHS
      RUNS+=("$tag-$name-t$t|$preset|$t|$epochs|$extra")
    done < <(study_arms)
  done
}

study_budget() {  # BUDGET_S: sets TEACHER_SEEDS, REFEREE_SEEDS, ARMS, FIRST_ARMS, TEACHER_EPOCHS, EPOCHS
  study_flags
  if ! BUDGET_LINES=$($CALC studies/budget.py --mae "$MAE_PRESET" --imae "$IMAE_PRESET" --images "$IMAGES" \
      --teacher-epochs "$TEACHER_EPOCHS" --epochs "$EPOCHS" --budget-s "$BUDGET_S" \
      ${MAE_IMG_S:+--mae-img-s "$MAE_IMG_S"} ${IMAE_IMG_S:+--imae-img-s "$IMAE_IMG_S"} \
      "${DEVICE_FLAGS[@]}" "${SET_FLAGS[@]}"); then
    echo "$BUDGET_LINES"
    return 1
  fi
  eval "$(sed -n 's/^set: //p' <<<"$BUDGET_LINES")"
}

study_plan() {  # prints the plan, the FLOP ratio, the checks and the time expected from train steps timed here first
  local n_mae=0 n_imae=0 n_ap=0 n_start r name preset seed epochs extra
  n_start=$(( $(wc -w <<<"$TEACHER_SEEDS") + $(wc -w <<<"$REFEREE_SEEDS") ))
  for r in "${RUNS[@]}"; do
    IFS='|' read -r name preset seed epochs extra <<<"$r"
    if [[ "$name" == ap-* ]]; then n_ap=$((n_ap + 1)); continue; fi
    if [[ "$name" == a-* ]]; then n_mae=$((n_mae + 1)); else n_imae=$((n_imae + 1)); fi
  done
  echo "plan: teachers (seeds $TEACHER_SEEDS) and referees (seeds $REFEREE_SEEDS), each $MAE_PRESET for" \
       "$TEACHER_EPOCHS epochs from scratch; then ${#RUNS[@]} arms of $EPOCHS epochs ((a+) $FLOPS_EPOCHS), each from" \
       "its teacher (arms $ARMS per teacher${FIRST_ARMS:+; $FIRST_ARMS for teacher ${TEACHER_SEEDS%% *}});" \
       "an untrained encoder;" \
       "every run scored against each referee; under $OUT"
  echo "flops: $FLOPS_LINE"
  [[ -z "${BUDGET_S:-}" ]] || grep -v '^set: ' <<<"$BUDGET_LINES"
  for r in "${RUNS[@]}"; do
    IFS='|' read -r name preset seed epochs extra <<<"$r"
    echo "arm $name: $preset${extra:+ $extra}, $epochs epochs, seed $seed, from $OUT/teacher-s$seed"
  done
  study_counts
  echo "evaluations: $N_SEP separability (every arm, teacher and the untrained encoder against each of" \
       "$(wc -w <<<"$REFEREE_SEEDS") referees), $N_SEM semantics, $N_CMP comparisons (each reads both runs' stored" \
       "per-item scores)"
  if [[ -n "${FINETUNE_EPOCHS:-}" ]]; then
    echo "fine-tuning: arms $FINETUNE_ARMS of every teacher ($N_FT runs), $FINETUNE_EPOCHS epochs of $FINETUNE_PRESET"
  else
    echo "fine-tuning: none at this scale (FINETUNE_EPOCHS unset): claim 2 reads the probe, kNN and NMI only"
  fi
  $CALC studies/check_start.py "$OUT" --teachers "$TEACHER_SEEDS" --referees "$REFEREE_SEEDS" \
    --loss-tolerance "$REFEREE_TOLERANCE" ${MIN_PROBE_GAIN:+--min-probe-gain "$MIN_PROBE_GAIN"} || true
  $PY studies/estimate.py --mae "$MAE_PRESET" --imae "$IMAE_PRESET" --images "$IMAGES" \
    --teacher-epochs "$TEACHER_EPOCHS" --teachers "$n_start" --epochs "$EPOCHS" --arms "$n_mae mae $n_imae imae" \
    --extra-mae-epochs "$((n_ap * FLOPS_EPOCHS))" --eval-times "$OUT/eval-times.tsv" \
    --evals "separability $N_SEP semantics $N_SEM compare $N_CMP finetune $N_FT" --jobs "$JOBS" --threads "$THREADS" \
    "${DEVICE_FLAGS[@]}" "${SET_FLAGS[@]}"
}

study_plan_evaluations() {  # the evaluation estimate alone (after the start's evaluations ran: timed here)
  [[ -n "${DRY_RUN:-}" ]] && return 0
  study_counts
  $CALC studies/estimate.py --eval-only --eval-times "$OUT/eval-times.tsv" --jobs "$JOBS" \
    --evals "separability $N_SEP semantics $N_SEM compare $N_CMP finetune $N_FT"
}

study_counts() {  # N_SEP N_SEM N_CMP N_FT: the evaluations of the plan (RUNS set)
  local n_t n_r tag
  n_t=$(wc -w <<<"$TEACHER_SEEDS") n_r=$(wc -w <<<"$REFEREE_SEEDS")
  N_CMP=0
  if [[ " $ARMS " == *" b "* ]]; then
    for tag in a ap h d e; do [[ " $ARMS " == *" $tag "* ]] && N_CMP=$((N_CMP + n_t * n_r)); done
  fi
  N_SEP=$(( (${#RUNS[@]} + n_t + 1) * n_r )) N_SEM=$(( ${#RUNS[@]} + n_t + n_r + 1 ))
  N_FT=$(finetunes | wc -l)
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

study_start() {  # the teachers, the referees and the untrained encoder; their semantics; the checks
  local s d first_ref=${REFEREE_SEEDS%% *} warm=()
  [[ -z "${TEACHER_WARMUP:-}" ]] || warm=(--set "train.warmup_epochs=$TEACHER_WARMUP")
  for s in $TEACHER_SEEDS; do
    job "teacher-s$s" $IMAE pretrain --preset "$MAE_PRESET" "${TRAIN[@]}" --seed "$s" --epochs "$TEACHER_EPOCHS" \
      "${warm[@]}" --output-dir "$OUT/teacher-s$s" --resume auto
  done
  for s in $REFEREE_SEEDS; do
    job "referee-s$s" $IMAE pretrain --preset "$MAE_PRESET" "${TRAIN[@]}" --seed "$s" --epochs "$TEACHER_EPOCHS" \
      "${warm[@]}" --output-dir "$OUT/referee-s$s" --resume auto
  done
  join_jobs
  $PY studies/untrained.py "$MAE_PRESET" "$OUT/untrained" "${TRAIN[@]}"  # the same architecture and data
  for d in untrained $(printf 'teacher-s%s ' $TEACHER_SEEDS) $(printf 'referee-s%s ' $REFEREE_SEEDS); do
    [[ -f "$OUT/$d/eval/semantics.json" ]] || \
      job "semantics-$d" timed semantics $IMAE semantics "$OUT/$d" "${EVAL[@]}" --set semantics.separability=false
  done
  # one separability before any arm: it is needed later anyway, and it times the plan's evaluation estimate
  [[ -f "$OUT/untrained/eval-referee-s$first_ref/separability.json" ]] || job "separability-untrained-s$first_ref" \
    timed separability $IMAE separability "$OUT/untrained" --reference "$OUT/referee-s$first_ref" \
    --output-dir "$OUT/untrained/eval-referee-s$first_ref" "${EVAL[@]}"
  join_jobs
  if ! $CALC studies/check_start.py "$OUT" --teachers "$TEACHER_SEEDS" --referees "$REFEREE_SEEDS" \
      --loss-tolerance "$REFEREE_TOLERANCE" ${MIN_PROBE_GAIN:+--min-probe-gain "$MIN_PROBE_GAIN"} \
      | tee -a "$OUT/plan.txt"; then
    echo "a check failed (above): no arm runs" >&2
    return 1
  fi
}

study_train() {
  local r name preset seed epochs extra teach warm=()
  [[ -z "${ARM_WARMUP:-}" ]] || warm=(--set "train.warmup_epochs=$ARM_WARMUP")  # after the arm's own sets: it wins
  for r in "${RUNS[@]}"; do
    IFS='|' read -r name preset seed epochs extra <<<"$r"
    teach=()
    [[ "$preset" == "$IMAE_PRESET" ]] && teach=(--teacher "$OUT/teacher-s$seed")
    # shellcheck disable=SC2086
    job "$name" $IMAE pretrain --preset "$preset" "${TRAIN[@]}" --output-dir "$OUT/$name" --seed "$seed" \
      --epochs "$epochs" --init-from "$OUT/teacher-s$seed" "${teach[@]}" $extra "${warm[@]}" --resume auto
  done
  join_jobs
}

study_compare() {  # A B referee-seed: B minus A against the referee, in B's eval-referee-s<R>/vs-<A's tag>/; against
  local a=$1 b=$2 r=$3 out head=()  # the first referee also the attentive probe (claim 2 reads both probes there)
  out="$b/eval-referee-s$r/vs-$(basename "$a" | cut -d- -f1)"
  [[ "$r" == "${REFEREE_SEEDS%% *}" ]] && head=(--head attentive)
  if [[ -f "$out/compare.json" ]] && { ((${#head[@]} == 0)) || grep -q '"attentive"' "$out/compare.json"; }; then
    return 0
  fi
  job "compare-$(basename "$b")-$(basename "$out")-s$r" \
    timed compare $IMAE compare "$a" "$b" --reference "$OUT/referee-s$r" --output-dir "$out" "${EVAL[@]}" "${head[@]}"
}

study_evaluate() {
  local d r t tag
  for d in untrained $(printf 'teacher-s%s ' $TEACHER_SEEDS) "${RUNS[@]%%|*}"; do
    for r in $REFEREE_SEEDS; do
      [[ -f "$OUT/$d/eval-referee-s$r/separability.json" ]] || job "separability-$d-s$r" \
        timed separability $IMAE separability "$OUT/$d" --reference "$OUT/referee-s$r" \
        --output-dir "$OUT/$d/eval-referee-s$r" "${EVAL[@]}"
    done
    # semantics once, only what the claims read (probe, kNN, NMI: no mixtures, no referee needed)
    [[ -f "$OUT/$d/eval/semantics.json" ]] || \
      job "semantics-$d" timed semantics $IMAE semantics "$OUT/$d" "${EVAL[@]}" --set semantics.separability=false
  done
  join_jobs  # the comparisons read the per-item scores the separability runs store
  for t in $TEACHER_SEEDS; do
    [[ " $ARMS " == *" b "* ]] || continue
    for r in $REFEREE_SEEDS; do
      for tag in a ap h; do
        [[ " $ARMS " == *" $tag "* ]] && study_compare "$(arm_dir "$tag" "$t")" "$(arm_dir b "$t")" "$r"
      done
      for tag in d e; do
        [[ " $ARMS " == *" $tag "* ]] && study_compare "$(arm_dir b "$t")" "$(arm_dir "$tag" "$t")" "$r"
      done
    done
  done
  join_jobs
}

study_finetune() {  # claim 2's fine-tuning top-1 (last epoch) of FINETUNE_ARMS, each with its teacher's seed
  local d
  for d in $(finetunes); do
    [[ -f "$d/finetune/finetune.json" ]] || job "finetune-$(basename "$d")" timed finetune $IMAE finetune "$d" \
      --preset "$FINETUNE_PRESET" "${TRAIN[@]}" --epochs "$FINETUNE_EPOCHS" --seed "${d##*-t}" \
      --output-dir "$d/finetune" --resume auto
  done
  join_jobs
}

study_publish() {
  local r
  $PY studies/collect.py "$OUT" "$RESULTS"
  for r in $REFEREE_SEEDS; do
    $PY studies/table.py "$RESULTS" --referee "$r" --write "$RESULTS/table-referee-s$r.md"
  done
  $PY studies/curves.py "$RESULTS"
  $PY studies/figure.py "$RESULTS"
  $PY studies/claims.py "$RESULTS"
}

study_all() {  # the whole study; PLAN_ONLY=1 prints the plan and the estimate (also to $OUT/plan.txt), then stops
  [[ -z "${BUDGET_S:-}" ]] || study_budget
  study_runs
  mkdir -p "$OUT"
  study_plan | tee "$OUT/plan.txt"
  [[ -n "${PLAN_ONLY:-}" ]] && return 0
  study_start
  study_plan_evaluations | tee -a "$OUT/plan.txt"  # again, now with the start's evaluations timed
  study_train
  study_evaluate
  study_finetune
  study_publish
}
