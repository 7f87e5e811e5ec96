#!/usr/bin/env bash
# Round 8a (issue 9; one 8-GPU host, NCCL; NOT RUN YET: 8-GPU machines were withheld). Weak scaling 1 -> 8 GPUs,
# EDM2-S and EDM2-XL, ZeRO-1 and ZeRO-2, batch 32 per GPU, compiled + CUDA graphs. The one-GPU baselines run alone,
# first, so the inductor cache is warm for the 8-GPU jobs (budget ~9 minutes in all on H200s).
set -uo pipefail
source benchmarks/env.sh; round_env round8a
b 1 150 --preset edm2-img512-s $RO --steps 30 --zero-stage 1
b 8 100 --preset edm2-img512-s $RO --steps 30 --zero-stage 1
b 1 90  --preset edm2-img512-s $RO --steps 30 --zero-stage 2
b 8 90  --preset edm2-img512-s $RO --steps 30 --zero-stage 2
b 1 200 --preset edm2-img512-xl $RO --steps 12 --zero-stage 1
b 8 120 --preset edm2-img512-xl $RO --steps 12 --zero-stage 1
collect round8a
