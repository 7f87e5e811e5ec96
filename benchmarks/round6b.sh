#!/usr/bin/env bash
# Round 6b (4-GPU host, NCCL): weak scaling to 4 GPUs (S ZeRO-1/2, XL ZeRO-1), then the FID benchmark on 1 and 4 GPUs.
set -uo pipefail
source benchmarks/setup_gpu.sh; set +e
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
O=/tmp/round6b; mkdir -p $O   # Logs here; a tarball and bench.jsonl go to $OUT (8 files at most come back).
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $O/gpus.txt
RO="--sdpa --compile --channels-last --compile-mode reduce-overhead"
b() { local n=$1 lim=$2; shift 2; echo "== $n GPU: $*"
      timeout $lim torchrun --standalone --nproc_per_node $n launchers/bench.py --out $O/bench.jsonl "$@" > $O/b.last 2>&1
      echo "rc=$?"; grep -E "^\{|Error|out of memory" $O/b.last | tail -2 | cut -c1-700; }
b 1 100 --preset edm2-img512-s $RO --steps 30 --zero-stage 2
b 4 150 --preset edm2-img512-s $RO --steps 30 --zero-stage 1
b 4 120 --preset edm2-img512-s $RO --steps 30 --zero-stage 2
b 4 200 --preset edm2-img512-xl $RO --steps 12 --zero-stage 1
echo "== FID bench"; timeout 150 python3 tools/bench_fid.py --gpus 1,4 --num-samples 2048 > $O/fid.log 2>&1; echo "rc=$?"; tail -4 $O/fid.log
cp $O/bench.jsonl ${OUT:-/tmp}/round6b-bench.jsonl 2>/dev/null; tar czf ${OUT:-/tmp}/round6b-logs.tgz -C $O .
