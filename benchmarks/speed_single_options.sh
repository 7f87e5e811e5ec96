#!/usr/bin/env bash
# Round 1: baselines and single options on one GPU (EDM2-S and XL, ImageNet-512 latent shape, batch 32).
set -uo pipefail
source benchmarks/setup_gpu.sh
export PYTHONUNBUFFERED=1
OUTF=${OUT:-/tmp}/bench.jsonl
python3 -m pip list 2>/dev/null | grep -iE "^(torch|triton|numpy|psutil|ninja|tqdm|packaging|aiohttp|requests|boto|flask|cryptography|werkzeug|diffusers|huggingface|typing)" > ${OUT:-/tmp}/piplist.txt
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> ${OUT:-/tmp}/piplist.txt
b() { echo "== $*"; timeout 420 python3 launchers/bench.py --out $OUTF "$@" 2>&1 | grep -vE "Warning|warn|^\s*$" | tail -4; }
b --preset edm2-img512-s --steps 15
b --preset edm2-img512-s --fp32 --steps 10
b --preset edm2-img512-s --sdpa --channels-last --steps 15
b --preset edm2-img512-s --sdpa --compile --steps 15
b --preset edm2-img512-xl --sdpa --compile --steps 10
b --preset edm2-img512-xl --sdpa --compile --channels-last --steps 10
