#!/usr/bin/env bash
# The CPU precision A/B/C of docs/precision.md on the quickstart's setting: ECT-tune the same teacher with the same
# data and seeds in fp32, fp16 (loss-scaled) and bf16 compute (deepspeed, 2 CPU processes each), then score each
# with tools/quickstart_report.py and measure the forward and gradient rounding error per stage
# (tools/precision_report.py --grads). CPUs without native half-precision kernels run bf16/fp16 10-16x slower
# than fp32, so the ECT runs are a quarter of the quickstart's (4 stages of 1,920 images; override with ECT_NIMG).
# Usage, after launchers/quickstart.sh has made runs/quickstart:
#   [MODES="fp32 fp16 bf16"] bash benchmarks/precision_abc_cpu.sh [RUN=runs/quickstart] [OUT=runs/cpu-abc]
# Re-running resumes: a finished ECT run is only scored again, and the teacher's report is kept.
set -uo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/quickstart}; OUT=${2:-runs/cpu-abc}
source .venv/bin/activate
source launchers/require_done.sh
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
TEACHER=$(ls "$RUN"/teacher/ema/*.safetensors | tail -1)
mkdir -p "$OUT"
[[ -f "$OUT/prec-teacher.json" ]] || python tools/precision_report.py --net "$TEACHER" --config configs/demo-digits.yaml \
  --device cpu --grads --modes bf16,fp16 --samples 16 --data "$RUN/data/manifest.json" --out "$OUT/prec-teacher.json" \
  | tee "$OUT/prec-teacher.txt"
for p in ${MODES:-fp32 fp16 bf16}; do
  t=$SECONDS
  deepspeed --num_gpus 2 --master_port 29531 launchers/train.py --config configs/demo-digits.yaml --init="$TEACHER" \
    --run_dir="$OUT/ect-$p" --engine.precision=$p --data.url="$RUN/data/manifest.json" \
    --train.total_nimg=$((4 * ${ECT_NIMG:-1920})) --ect.stage_nimg=${ECT_NIMG:-1920} --train.status_nimg=960 \
    --ema.export_nimg=$((2 * ${ECT_NIMG:-1920})) --checkpoint.interval_nimg=$((2 * ${ECT_NIMG:-1920})) \
    >> "$OUT/ect-$p.log" 2>&1
  echo "ect-$p rc=$? in $((SECONDS - t)) s"
  require_done "$OUT/ect-$p" || continue   # deepspeed's status is 0 even when its launch process was killed.
  grep -E "^kimg|precision check|WARNING" "$OUT/ect-$p.log" | cut -c1-160
  python tools/quickstart_report.py --run "$RUN" --ect "$OUT/ect-$p" --out "$OUT/report-$p" --threads 2 | tail -9
done
