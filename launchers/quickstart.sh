#!/usr/bin/env bash
# Quickstart: set up a virtual environment, turn scikit-learn's digits into shards (no download), pretrain a
# small teacher with EDM2's loss, then ECT-tune it with the real `deepspeed` launcher on 2 CPU processes.
# Watch it live: tensorboard --logdir runs/quickstart   (sample grids also land in runs/quickstart/*/samples/)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0     # CPU build; use your CUDA build on GPU machines
  .venv/bin/python -m pip install -q -e ".[dev]"   # dev = demo data + test dependencies
fi
source .venv/bin/activate
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
python tools/make_shards.py --source sklearn-digits --out runs/quickstart/data --resolution 16 --pixels --num-shards 8
deepspeed --num_gpus 2 launchers/train.py --config configs/demo-digits-teacher.yaml
deepspeed --num_gpus 2 launchers/train.py --config configs/demo-digits.yaml
echo "Done. Samples: runs/quickstart/ect/samples/  TensorBoard: tensorboard --logdir runs/quickstart"
