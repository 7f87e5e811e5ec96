#!/usr/bin/env bash
# The CPU precision A/B/C of docs/precision.md on the quickstart's setting: ECT-tune the same teacher with the same
# data and seeds in fp32, fp16 (loss-scaled) and bf16 compute (deepspeed, 2 CPU processes each), then score each
# with tools/quickstart_report.py and measure the forward and gradient rounding error per stage
# (tools/precision_report.py --grads). Usage, after launchers/quickstart.sh has made runs/quickstart:
#   bash benchmarks/cpu_abc.sh [RUN=runs/quickstart] [OUT=runs/cpu-abc]
set -uo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/quickstart}; OUT=${2:-runs/cpu-abc}
source .venv/bin/activate
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
TEACHER=$(ls "$RUN"/teacher/ema/*.safetensors | tail -1)
mkdir -p "$OUT"
python tools/precision_report.py --net "$TEACHER" --config configs/demo-digits.yaml --device cpu --grads \
  --modes bf16,fp16,fp16@bf16 --samples 64 --data "$RUN/data/manifest.json" --out "$OUT/prec-teacher.json" \
  | tee "$OUT/prec-teacher.txt"
for p in fp32 fp16 bf16; do
  t=$SECONDS
  deepspeed --num_gpus 2 --master_port 29531 launchers/train.py --config configs/demo-digits.yaml --init="$TEACHER" \
    --run_dir="$OUT/ect-$p" --engine.precision=$p --data.url="$RUN/data/manifest.json" > "$OUT/ect-$p.log" 2>&1
  echo "ect-$p rc=$? in $((SECONDS - t)) s"
  grep -E "^kimg|precision check|WARNING" "$OUT/ect-$p.log" | cut -c1-160
  python tools/quickstart_report.py --run "$RUN" --ect "$OUT/ect-$p" --out "$OUT/report-$p" --threads 2 | tail -9
done
