#!/usr/bin/env bash
# ECT against consistency distillation (CD) and ECD on the quickstart's digits, measured (docs/distillation.md).
# Same teacher, data, network, optimizer, EMAs and metric (FD_classifier) for all three; the only differences are
# the objective and the images each is given:
#   ECT  configs/demo-digits.yaml at its shipped budget (30,720 images), seeds $ECT_SEEDS
#   CD   configs/demo-digits-cd.yaml, one run per seed, extended through $CD_LEVELS x ECT's images (up to $CD_MAX)
#        until it matches ECT (CD_FULL=1: up to $CD_MAX regardless); its schedule (N, mu, constant lr) does not
#        depend on the total, so the EMA exported every 0.5x is what a run of that length would give; plus one run
#        per seed to 0.5x exported every 1/8x, for the curve below ECT's budget
#   ECD  configs/demo-digits-ecd.yaml at each budget of $ECD_BUDGETS (x ECT's images, ECT's 4 stages scaled to it)
#        in increasing order until it matches ECT
# benchmarks/distill_compare.py scores every export (1 and 2 steps, 500 samples) after each round and finally writes
# the table, the k-factors with bootstrap intervals over seeds and the metric-vs-compute plot (Compute/train_flops).
# Usage (2 CPU cores; the data, classifier and teacher of launchers/quickstart.sh are made here if missing):
#   [ECT_SEEDS="0 1 2"] [SEEDS="0 1"] [CD_MAX=4] [CD_FULL=0] [ECD_BUDGETS="0.5 1 2 4"] [NPROC=2] \
#     bash benchmarks/distill_compare.sh [OUT]
# docs/distillation.md's results: these defaults with CD_FULL=1 (2 h 49 min of training on 2 shared cores).
# Re-running resumes: finished runs are kept (a run is finished when its last EMA export exists).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/env.sh
source launchers/require_done.sh
device_env distill_compare
OUT=${1:-runs/distill_compare}
Q=${QUICKSTART:-$OUT/base}   # data/, classifier.safetensors, teacher/ (the quickstart's first three steps)
ECT_SEEDS=${ECT_SEEDS:-0 1 2}; SEEDS=${SEEDS:-0 1}; CD_MAX=${CD_MAX:-4}; ECD_BUDGETS=${ECD_BUDGETS:-0.5 1 2 4}
CD_LEVELS=${CD_LEVELS:-1 2 4 8}; CD_FULL=${CD_FULL:-0}; NPROC=${NPROC:-2}
ECT_NIMG=30720   # configs/demo-digits.yaml: 4 stages x 7,680 images.
NICE=${NICE:-nice -n 10}
PORT=$(python -c "from tests.distributed import free_port; print(free_port())")
mkdir -p "$OUT"
start=$SECONDS
say() { echo "[distill_compare] $1 (at $((SECONDS - start)) s)" | tee -a "$OUT/timeline.txt"; }
train() {  # train NAME CONFIG ARGS...: one deepspeed run on 2 CPU processes, skipped when its last export exists
  local name=$1 config=$2 final=$3; shift 3
  if compgen -G "$OUT/$name/ema/ema-$(printf %07d $((final / 1000)))-power-0.050.safetensors" > /dev/null; then
    say "$name: done already"; return
  fi
  local t=$SECONDS
  $NICE deepspeed --num_gpus "$NPROC" --master_port "$PORT" launchers/train.py --config "$config" --run_dir="$OUT/$name" \
    --data.url="$Q/data/manifest.json" --checkpoint.enabled=false --logging.progress=plain "$@" > "$OUT/$name.log" 2>&1 \
    || { echo "error: $name failed; the end of $OUT/$name.log:"; tail -5 "$OUT/$name.log"; exit 1; } >&2
  require_done "$OUT/$name" || exit 1   # deepspeed's status is 0 even when its launch process was killed.
  say "$name: trained in $((SECONDS - t)) s"
}

if [[ ! -f "$Q/teacher/ema/ema-0000057-power-0.100.safetensors" ]]; then
  say "base: shards, classifier and teacher as launchers/quickstart.sh"
  $NICE python tools/make_shards.py --source sklearn-digits --out "$Q/data" --resolution 8 --pixels --grayscale \
    --num-shards 8 --progress-s 60 > "$OUT/base.log" 2>&1
  $NICE python tools/train_classifier.py --data "$Q/data/manifest.json" --out "$Q/classifier.safetensors" \
    --threads 2 >> "$OUT/base.log" 2>&1
  $NICE deepspeed --num_gpus "$NPROC" --master_port "$PORT" launchers/train.py --config configs/demo-digits-teacher.yaml \
    --run_dir="$Q/teacher" --data.url="$Q/data/manifest.json" >> "$OUT/base.log" 2>&1
  say "base: done"
fi
TEACHER=$Q/teacher/ema/ema-0000057-power-0.100.safetensors
T_MIDS=0.5,0.7,1,1.4,2,3,4,6,8   # Each method's own 2-step t_mid: the best of these at ECT's budget (seed 0).
score() {
  $NICE python benchmarks/distill_compare.py --root "$OUT" --base "$Q" --threads 2 --choose-t-mid $T_MIDS "$@"
}
for s in $ECT_SEEDS; do
  train "ect-s$s" configs/demo-digits.yaml $ECT_NIMG --init="$TEACHER" --train.seed=$s --ema.export_nimg=$ECT_NIMG
done
score --score-only
# CD: each seed's run is extended level by level (exact resume from its last checkpoint) until the seed mean of
# some export reaches ECT's 2-step FD (with CD_FULL=1 it goes on), or CD_MAX x ECT's images.
for level in $CD_LEVELS; do
  (( $(python -c "print(int($level <= $CD_MAX))") )) || break
  n=$(python -c "print(int(round($level * $ECT_NIMG)))")
  for s in $SEEDS; do
    train "cd-s$s" configs/demo-digits-cd.yaml "$n" --init="$TEACHER" --teacher="$TEACHER" --train.seed=$s \
      --train.total_nimg="$n" --ema.export_nimg=$((ECT_NIMG / 2)) --checkpoint.enabled=true \
      --checkpoint.interval_nimg=1000000000 --checkpoint.keep_last=1
  done
  score --score-only
  if score --reached cd --by "$level"; then
    say "cd: reached ECT's 2-step FD by $level x ECT's images"
    [[ "$CD_FULL" == 1 ]] || break
  fi
done
# CD below ECT's budget: a run of 0.5x per seed, exported every 1/8 of ECT's images (it repeats the main run's first
# 0.5x exactly; the report checks that their 0.5x exports agree).
for s in $SEEDS; do
  train "cd-x0.5-s$s" configs/demo-digits-cd.yaml $((ECT_NIMG / 2)) --init="$TEACHER" --teacher="$TEACHER" \
    --train.seed=$s --train.total_nimg=$((ECT_NIMG / 2)) --ema.export_nimg=$((ECT_NIMG / 8))
done
score --score-only
# ECD: one run per budget (ECT's 4 stages scaled to it), budgets in increasing order until the seed mean reaches
# ECT's 2-step FD, or the last of ECD_BUDGETS.
for b in $ECD_BUDGETS; do
  n=$(python -c "print(int(round($b * $ECT_NIMG)))")
  for s in $SEEDS; do
    train "ecd-x$b-s$s" configs/demo-digits-ecd.yaml "$n" --init="$TEACHER" --teacher="$TEACHER" --train.seed=$s \
      --train.total_nimg="$n" --ect.stage_nimg=$((n / 4)) --ema.export_nimg="$n"
  done
  score --score-only
  if score --reached ecd --by "$b"; then say "ecd: reached ECT's 2-step FD at $b x ECT's images"; break; fi
done
say "report"
score | tee "$OUT/summary.txt"
say "done"
