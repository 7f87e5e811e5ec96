#!/usr/bin/env bash
# Round 6c (4-GPU host, NCCL), correctness: ZeRO 1/2/3 parity on 2 GPUs and a streamed S3 run on the other 2 at
# the same time, parity on 4 GPUs, an elastic resume 4 -> 2 GPUs.
set -uo pipefail
source benchmarks/env.sh; round_env round6c
echo "== parity (2 GPUs) + S3 streamed run (2 GPUs)"
(CUDA_VISIBLE_DEVICES=0,1 timeout 120 torchrun --standalone --nproc_per_node 2 benchmarks/multigpu_parity.py > $O/parity2.log 2>&1; echo "parity2 rc=$?" >> $O/parity2.log) &
(CUDA_VISIBLE_DEVICES=2,3 timeout 150 bash benchmarks/multigpu_s3_run.sh > $O/s3.log 2>&1; echo "s3 rc=$?" >> $O/s3.log) &
wait; grep -E "^\{|rc=" $O/parity2.log | cut -c1-1500; tail -5 $O/s3.log
echo "== parity (4 GPUs)"; timeout 120 torchrun --standalone --nproc_per_node 4 benchmarks/multigpu_parity.py > $O/parity4.log 2>&1; echo "rc=$?"; grep -E "^\{" $O/parity4.log | cut -c1-1500
echo "== resume 4 -> 2"; timeout 150 bash benchmarks/multigpu_resume.sh > $O/resume.log 2>&1; echo "rc=$?"; tail -5 $O/resume.log
collect round6c
