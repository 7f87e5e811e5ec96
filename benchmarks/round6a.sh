#!/usr/bin/env bash
# Round 6a (4-GPU host, NCCL). Phase A: four independent one-GPU lanes at once (each job alone on its GPU):
#   GPU0: EDM2-S, CUDA graphs for forced weight norm on vs off; GPU1: EDM2-XL at batch 32 and 64;
#   GPU2: EDM2-XXL under a 78 GiB cap (an 80 GB card), first setting that fits; GPU3: graph-WN GPU test, S with 4 accumulation rounds, S without comm overlap.
# Phase B: weak scaling to 2 GPUs, ZeRO-1 on GPUs 0,1 and ZeRO-2 on GPUs 2,3 at the same time.
set -uo pipefail
source benchmarks/setup_gpu.sh; set +e
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
O=/tmp/round6a; mkdir -p $O   # Logs here; a tarball and bench.jsonl go to $OUT (8 files at most come back).
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $O/gpus.txt
RO="--sdpa --compile --channels-last --compile-mode reduce-overhead"
b() { local gpus=$1 n=$2 lim=$3 log=$4; shift 4
      echo "== [$gpus] $n GPU: $*" >> $O/$log.txt
      CUDA_VISIBLE_DEVICES=$gpus timeout $lim torchrun --standalone \
        --nproc_per_node $n launchers/bench.py --out $O/bench.jsonl "$@" > $O/$log.last 2>&1
      echo "rc=$?" >> $O/$log.txt; grep -E "^\{|Error|out of memory" $O/$log.last | tail -2 | cut -c1-700 >> $O/$log.txt; }
lane0() { b 0 1 200 lane0 --preset edm2-img512-s $RO --steps 30
          b 0 1 150 lane0 --preset edm2-img512-s $RO --steps 30 --engine.graph_weight_norm=false; }
lane1() { b 1 1 240 lane1 --preset edm2-img512-xl $RO --steps 12
          b 1 1 190 lane1 --preset edm2-img512-xl $RO --steps 8 --warmup 3 --batch-gpu 64; }
lane2() { for a in "--batch-gpu 32" "--batch-gpu 16" "--batch-gpu 32 --engine.offload_optimizer=cpu"; do
            b 2 1 120 lane2 --preset edm2-img512-xxl --sdpa --channels-last --steps 3 --warmup 2 --max-memory-gib 78 $a
            grep -q '^{' $O/lane2.last && break; done; }
lane3() { CUDA_VISIBLE_DEVICES=3 timeout 100 python3 -m pytest -q -p no:cacheprovider tests/engine/test_master_graphs.py > $O/lane3.txt 2>&1
          b 3 1 200 lane3 --preset edm2-img512-s $RO --steps 8 --warmup 3 --accum 4
          b 3 1 130 lane3 --preset edm2-img512-s $RO --steps 30 --engine.overlap_comm=false; }
lane0 & lane1 & lane2 & lane3 & wait
cat $O/lane*.txt
echo "== phase B"
b 0,1 2 170 laneB0 --preset edm2-img512-s $RO --steps 30 --zero-stage 1 &
b 2,3 2 170 laneB1 --preset edm2-img512-s $RO --steps 30 --zero-stage 2 &
wait; cat $O/laneB*.txt
cp $O/bench.jsonl ${OUT:-/tmp}/round6a-bench.jsonl 2>/dev/null; tar czf ${OUT:-/tmp}/round6a-logs.tgz -C $O .
