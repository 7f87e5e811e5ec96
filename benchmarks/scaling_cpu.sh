#!/usr/bin/env bash
# The CPU scaling study of docs/scaling.md, from a fresh clone: ECT on scikit-learn's 8x8 digits, widths 8/16/32,
# 2 seeds, 5 budgets from 2,048 to 32,768 images, through the shipped tools only:
#   shards -> the offline metric's classifier and its reference statistics -> 3 teachers -> 30 ECT runs -> report.
#   bash benchmarks/scaling_cpu.sh            # every step skips what is already there; re-run it after a kill
# Results: runs/scaling-digits/points/report/ (sweep.md, separate/ and along/: report.md, fits.json, PNGs).
# Uses `nice -n 10` and 2 CPU processes per run (the quickstart's launcher setup).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]] && source .venv/bin/activate
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
SWEEP=configs/sweeps/digits-cpu.yaml
D=runs/scaling-digits
start=$SECONDS
step() { echo "[scaling_cpu] $1 (at $((SECONDS - start)) s)"; }
if [ ! -f $D/data/manifest.json ]; then
  step "data: sklearn digits -> 8x8 grayscale shards"
  nice -n 10 python tools/make_shards.py --source sklearn-digits --out $D/data --resolution 8 --pixels --grayscale \
      --num-shards 8 --progress-s 60
fi
if [ ! -f $D/classifier.safetensors ]; then
  step "offline metric: the digit classifier"
  nice -n 10 python tools/train_classifier.py --data $D/data/manifest.json --out $D/classifier.safetensors --threads 2
fi
if [ ! -f $D/ref.npz ]; then
  step "offline metric: reference statistics of all 1,797 digits"
  nice -n 10 python tools/fid_ref.py --shards $D/data/manifest.json --classifier $D/classifier.safetensors --out $D/ref.npz
fi
step "teachers (configs/demo-digits-w{8,16,32}-teacher.yaml)"
nice -n 10 python tools/scaling.py $SWEEP teachers
step "sweep: 30 ECT runs (finished ones are skipped), then the report"
nice -n 10 python tools/scaling.py $SWEEP
step "done: $D/points/report/sweep.md"
