#!/usr/bin/env bash
# Round 6b (4-GPU host, NCCL): weak scaling to 4 GPUs (S ZeRO-1/2, XL ZeRO-1) with the 1-GPU ZeRO-2 baseline,
# then the FID benchmark on 1 and 4 GPUs.
set -uo pipefail
source benchmarks/env.sh; round_env round6b
b 1 100 --preset edm2-img512-s $RO --steps 30 --zero-stage 2
b 4 150 --preset edm2-img512-s $RO --steps 30 --zero-stage 1
b 4 120 --preset edm2-img512-s $RO --steps 30 --zero-stage 2
b 4 200 --preset edm2-img512-xl $RO --steps 12 --zero-stage 1
echo "== FID bench"; timeout 150 python3 tools/bench_fid.py --gpus 1,4 --num-samples 2048 > $O/fid.log 2>&1; echo "rc=$?"; tail -4 $O/fid.log
collect round6b
