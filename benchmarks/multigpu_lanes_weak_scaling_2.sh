#!/usr/bin/env bash
# Round 6a (4-GPU host, NCCL). Phase A: four independent one-GPU lanes at once (each job alone on its GPU):
#   GPU0: EDM2-S, CUDA graphs for forced weight norm on vs off; GPU1: EDM2-XL at batch 32 and 64;
#   GPU2: EDM2-XXL under a 78 GiB cap (an 80 GB card), first setting that fits;
#   GPU3: the graph-WN GPU test, S with 4 accumulation rounds, S without comm overlap.
# Phase B: weak scaling to 2 GPUs, ZeRO-1 on GPUs 0,1 and ZeRO-2 on GPUs 2,3 at the same time.
set -uo pipefail
source benchmarks/env.sh; round_env round6a
lane0() { b 1 200 --preset edm2-img512-s $RO --steps 30
          b 1 150 --preset edm2-img512-s $RO --steps 30 --engine.graph_weight_norm=false; }
lane1() { b 1 240 --preset edm2-img512-xl $RO --steps 12
          b 1 190 --preset edm2-img512-xl $RO --steps 8 --warmup 3 --batch-gpu 64; }
lane2() { for a in "--batch-gpu 32" "--batch-gpu 16" "--batch-gpu 32 --engine.offload_optimizer=cpu"; do
            b 1 120 --preset edm2-img512-xxl --sdpa --channels-last --steps 3 --warmup 2 --max-memory-gib 78 $a
            grep -q '^{' $O/lane2.last && break; done; }
lane3() { timeout 100 python3 -m pytest -q -p no:cacheprovider tests/engine/test_master_graphs.py 2>&1 | tail -2
          b 1 200 --preset edm2-img512-s $RO --steps 8 --warmup 3 --accum 4
          b 1 130 --preset edm2-img512-s $RO --steps 30 --engine.overlap_comm=false; }
for i in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$i LOG=lane$i lane$i > $O/lane$i.txt 2>&1 & done; wait
cat $O/lane?.txt
echo "== phase B"
CUDA_VISIBLE_DEVICES=0,1 LOG=laneB0 b 2 170 --preset edm2-img512-s $RO --steps 30 --zero-stage 1 > $O/laneB0.txt &
CUDA_VISIBLE_DEVICES=2,3 LOG=laneB1 b 2 170 --preset edm2-img512-s $RO --steps 30 --zero-stage 2 > $O/laneB1.txt &
wait; cat $O/laneB?.txt
collect round6a
