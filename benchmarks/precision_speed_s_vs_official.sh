#!/usr/bin/env bash
# Round 13a (one H200): speed of the precision modes next to the official ECT code, on the same card in one call.
#   1. ours, compiled with CUDA graphs: S and XL in fp16 and bf16 compile at the same time and are timed one at a
#      time (launchers/bench.py --gate); a job that fails is marked done so the others do not wait for it;
#   2. then the official step (locuslab/ect@imgnet, fetched into the git-ignored .official/;
#      benchmarks/official_ect_step.py) for EDM2-S and EDM2-XL in fp32/TF32 (its recipe) and fp16, alone on the GPU.
# Results stream to $OUT as they finish (a call cut off at its time limit keeps them).
set -uo pipefail
source benchmarks/env.sh; round_env round13a
RO=(--sdpa --compile --channels-last --compile-mode reduce-overhead)
export TORCHINDUCTOR_COMPILE_THREADS=4
R=${OUT:-$O}
log() { echo "[$(date +%T)] $*" | tee -a "$R/round13a.txt"; }

log "ours: compile together, time one at a time"
G=$O/gate; mkdir -p "$G"; N=${N:-4}
GATE_N=$N JOB_S=${JOB_S:-400} GATE_S=380
gated s-fp16 29621 --preset edm2-img512-s "${RO[@]}" --precision fp16 --steps 30 &
gated s-bf16 29622 --preset edm2-img512-s "${RO[@]}" --precision bf16 --steps 30 &
gated xl-fp16 29624 --preset edm2-img512-xl "${RO[@]}" --precision fp16 --steps 12 &
gated xl-bf16 29625 --preset edm2-img512-xl "${RO[@]}" --precision bf16 --steps 12 &
wait
log "official ECT step (alone on the GPU)"
for p in s xl; do for prec in fp32 fp16; do
  timeout 90 PYTHONPATH=.official python3 benchmarks/official_ect_step.py --preset $p --precision $prec \
    --steps $([[ $p == s ]] && echo 20 || echo 8) --out "$R/official.jsonl" > "$O/official-$p-$prec.log" 2>&1
  log "official $p $prec rc=$? $(grep -E '^\{' "$O/official-$p-$prec.log" | tail -1 | cut -c1-200)"
done; done

python3 - "$R" <<'PY' | tee -a "$R/round13a.txt"
import json, sys
R = sys.argv[1]
for f in ("official.jsonl", "bench.jsonl"):
    try:
        lines = open(f"{R}/{f}").read().splitlines()
    except FileNotFoundError:
        continue
    for line in lines:
        r = json.loads(line)
        print(f"{f[:8]:9s} {r['preset']:15s} {r['precision']:5s} {r.get('param_dtype', ''):5s} "
              f"{r['img_per_sec']:8.1f} img/s  warmup {r.get('warmup_sec', 0):6.1f}s  gate_wait "
              f"{r.get('gate_waited_sec', 0):6.1f}s  peak {r.get('peak_reserved_gb', r.get('peak_mem_gb', 0)):.1f} GB")
PY
tar czf "$R/round13a-logs.tgz" -C "$O" --exclude=gate .
log "done"
