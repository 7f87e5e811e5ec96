#!/usr/bin/env bash
# Round 8a (issue 9; one 8-GPU host, NCCL; NOT RUN YET: 8-GPU machines were withheld). Weak scaling 1 -> 8 GPUs,
# EDM2-S and EDM2-XL, ZeRO-1 and ZeRO-2, batch 32 per GPU, compiled + CUDA graphs. The one-GPU baselines run alone,
# first, so the inductor cache is warm for the 8-GPU jobs (budget ~9 minutes in all on H200s).
set -uo pipefail
source benchmarks/setup_gpu.sh; set +e
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
O=/tmp/round8a; mkdir -p $O   # Logs here; a tarball and bench.jsonl go to $OUT (8 files at most come back).
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $O/gpus.txt
RO="--sdpa --compile --channels-last --compile-mode reduce-overhead"
b() { local n=$1 lim=$2; shift 2; echo "== $n GPU: $*"
      timeout $lim torchrun --standalone --nproc_per_node $n launchers/bench.py --out $O/bench.jsonl "$@" > $O/b.last 2>&1
      echo "rc=$?"; grep -E "^\{|Error|out of memory" $O/b.last | tail -2 | cut -c1-700; }
b 1 150 --preset edm2-img512-s $RO --steps 30 --zero-stage 1
b 8 100 --preset edm2-img512-s $RO --steps 30 --zero-stage 1
b 1 90  --preset edm2-img512-s $RO --steps 30 --zero-stage 2
b 8 90  --preset edm2-img512-s $RO --steps 30 --zero-stage 2
b 1 200 --preset edm2-img512-xl $RO --steps 12 --zero-stage 1
b 8 120 --preset edm2-img512-xl $RO --steps 12 --zero-stage 1
cp $O/bench.jsonl ${OUT:-/tmp}/round8a-bench.jsonl 2>/dev/null; tar czf ${OUT:-/tmp}/round8a-logs.tgz -C $O .
