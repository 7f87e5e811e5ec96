#!/usr/bin/env bash
# Round 8b (issue 9; one 8-GPU host; NOT RUN YET). EDM2-XXL at a global batch of 2048 (32 per GPU x 8 GPUs x 8
# accumulation rounds) under ZeRO-3 and ZeRO-2 (eager, so no compile time is charged); an elastic resume
# 8 -> 4 GPUs (tiny net, ZeRO-3); the 50k-sample FID benchmark on 8 GPUs.
set -uo pipefail
source benchmarks/env.sh; round_env round8b
XXL="--preset edm2-img512-xxl --sdpa --channels-last --batch-gpu 32 --accum 8 --steps 2 --warmup 1"
b 8 150 $XXL --zero-stage 3
b 8 150 $XXL --zero-stage 2
echo "== resume 8 -> 4 (ZeRO-3)"; NA=8 NB=4 ZERO=3 TRAIN_EXTRA='--train.batch_gpu=2' timeout 150 bash benchmarks/multigpu_resume.sh > $O/resume.log 2>&1; echo "rc=$?"; tail -2 $O/resume.log
echo "== FID bench (8 GPUs, 50k)"; timeout 200 python3 tools/bench_fid.py --gpus 8 --num-samples 50000 > $O/fid.log 2>&1; echo "rc=$?"; grep BENCH_RESULT $O/fid.log | cut -c1-700
collect round8b
