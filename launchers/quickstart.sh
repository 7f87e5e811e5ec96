#!/usr/bin/env bash
# Quickstart: ECT's claim in minutes on a CPU. Sets up .venv (first run only), turns scikit-learn's built-in 8x8
# digits into shards (no download), trains the offline metric's digit classifier, pretrains a small diffusion
# teacher with EDM2's loss, ECT-tunes it with the real `deepspeed` launcher on 2 CPU processes, and prints the table
# that compares ECT's 1- and 2-step samples with the teacher's 32-step Heun samples (tools/quickstart_report.py).
# Watch it: tensorboard --logdir runs/quickstart     Results: runs/quickstart/report/ (table, JSON, sample grids)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  t=$SECONDS
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0     # CPU build (see README: Install); install torch first
  .venv/bin/python -m pip install -q -e ".[dev]"       # dev = demo data + test dependencies
  echo "[quickstart] installed into .venv in $((SECONDS - t)) s"
fi
source .venv/bin/activate
source launchers/require_done.sh   # deepspeed exits 0 even when its launch process was killed: trust <run_dir>/DONE
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
start=$SECONDS
step() { echo "[quickstart] $1 (at $((SECONDS - start)) s)"; }
rm -rf runs/quickstart
step "data: sklearn digits -> 8x8 grayscale shards"
python tools/make_shards.py --source sklearn-digits --out runs/quickstart/data --resolution 8 --pixels --grayscale \
    --num-shards 8 --progress-s 60
step "offline metric: training the digit classifier"
python tools/train_classifier.py --data runs/quickstart/data/manifest.json --out runs/quickstart/classifier.safetensors \
    --threads 2
step "teacher: EDM2 diffusion loss, deepspeed on 2 CPU processes"
deepspeed --num_gpus 2 --master_port "${QUICKSTART_PORT:-29511}" launchers/train.py --config configs/demo-digits-teacher.yaml
require_done runs/quickstart/teacher
step "ECT: tuning the teacher into a 1-2 step generator"
deepspeed --num_gpus 2 --master_port "${QUICKSTART_PORT:-29511}" launchers/train.py --config configs/demo-digits.yaml
require_done runs/quickstart/ect
step "report: teacher vs ECT samples"
python tools/quickstart_report.py --run runs/quickstart --threads 2
step "done"
