#!/usr/bin/env bash
# Round 5 (4 GPUs, NCCL): parity of ZeRO 1/2/3 on 2 GPUs, weak scaling 1->2->4 GPUs, XXL on one 80 GB card, FID bench.
set -uo pipefail
source benchmarks/setup_gpu.sh; set +e
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
O=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total --format=csv > $O/gpus.txt
echo "== parity (2 GPUs)"; timeout 100 torchrun --standalone --nproc_per_node 2 benchmarks/gpu_parity.py > $O/parity.log 2>&1; grep -E "^\{|Error|error" $O/parity.log | grep -v Warn | tail -4 | cut -c1-600
b() { n=$1; shift; echo "== $n GPU: $*"; timeout 110 torchrun --standalone --nproc_per_node $n launchers/bench.py --out $O/bench.jsonl "$@" 2>&1 | grep -E "^\{|Error" | tail -2 | cut -c1-260; }
S="--preset edm2-img512-s --sdpa --compile --channels-last --steps 10"
b 1 $S --zero-stage 1
b 2 $S --zero-stage 1
b 4 $S --zero-stage 1
b 4 $S --zero-stage 2
echo "== XXL on one GPU"; timeout 100 python3 launchers/bench.py --out $O/bench.jsonl --preset edm2-img512-xxl --sdpa --channels-last --batch-gpu 32 --steps 4 --warmup 2 2>&1 | grep -E "^\{|Error|out of memory" | tail -2 | cut -c1-300
echo "== FID bench"; timeout 120 python3 tools/bench_fid.py --gpus 1,4 --num-samples 1024 2>&1 | tail -4 | tee $O/fid.txt
