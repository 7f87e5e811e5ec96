#!/usr/bin/env bash
# Round 13d (one H200): EDM2-XL speed of our fp16 and bf16 paths next to the official ECT code's XL step in fp32/TF32
# and fp16, on the same card in one call, and the GPU tests of the precision modes (pytest -m gpu).
#   1. ours, compiled with CUDA graphs: XL fp16 and bf16 compile at the same time as the GPU tests run, then are timed
#      one at a time (launchers/bench.py --gate; the tests count as a gate member, so nothing else runs while timing);
#   2. the official step (locuslab/ect@imgnet in the git-ignored .official/; benchmarks/official_ect_step.py), alone.
# Results stream to $OUT as they finish.
set -uo pipefail
source benchmarks/env.sh; round_env round13d
export TORCHINDUCTOR_COMPILE_THREADS=6
R=${OUT:-$O}
log() { echo "[$(date +%T)] $*" | tee -a "$R/round13d.txt"; }
G=$O/gate; mkdir -p "$G"
RO=(--sdpa --compile --channels-last --compile-mode reduce-overhead)
GATE_N=3 JOB_S=450 GATE_S=400
log "ours: XL fp16 and bf16 compile together with the GPU tests, then are timed one at a time"
gated xl-fp16 29624 --preset edm2-img512-xl "${RO[@]}" --precision fp16 --steps 12 &
gated xl-bf16 29625 --preset edm2-img512-xl "${RO[@]}" --precision bf16 --steps 12 &
( MASTER_PORT=29630 timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/precision/test_gpu_modes.py -s \
    > "$R/pytest-gpu.txt" 2>&1; log "pytest -m gpu rc=$? $(tail -1 "$R/pytest-gpu.txt")"; touch "$G/ready.pytest" ) &
wait
log "official ECT step, XL (alone on the GPU)"
for prec in fp32 fp16; do
  timeout 100 PYTHONPATH=.official python3 benchmarks/official_ect_step.py --preset xl --precision $prec --steps 8 \
    --out "$R/official.jsonl" > "$O/official-xl-$prec.log" 2>&1
  log "official xl $prec rc=$? $(grep -E '^\{' "$O/official-xl-$prec.log" | tail -1 | cut -c1-200)"
done
cat "$R"/bench.jsonl "$R"/official.jsonl 2>/dev/null | cut -c1-400 | tee -a "$R/round13d.txt"
tar czf "$R/round13d-logs.tgz" -C "$O" --exclude=gate .
log "done"
