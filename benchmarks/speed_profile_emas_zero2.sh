#!/usr/bin/env bash
# Round 2: profile the compiled step; cost of EMAs; ZeRO-2 vs ZeRO-1 (BF16_Optimizer) on one GPU.
set -uo pipefail
source benchmarks/setup_gpu.sh
export PYTHONUNBUFFERED=1
OUTF=${OUT:-/tmp}/bench.jsonl
b() { echo "== $*"; timeout 400 python3 launchers/bench.py --out $OUTF "$@" 2>&1 | grep -E "^\{" | python3 -c "import json,sys; [print({k: (round(v,3) if isinstance(v,float) else v) for k,v in json.loads(l).items() if k in ('preset','zero_stage','img_per_sec','mfu','peak_mem_gb','data_wait_frac','sec_per_step','ema_profiles')}) for l in sys.stdin]"; }
timeout 400 python3 benchmarks/profile_step.py --preset edm2-img512-s --sdpa --compile > ${OUT:-/tmp}/profile_s.txt 2>&1; head -c 12000 ${OUT:-/tmp}/profile_s.txt | grep -vE "Warning|warn" | head -80
b --preset edm2-img512-s --sdpa --compile --steps 15
b --preset edm2-img512-s --sdpa --compile --steps 15 --zero-stage 2
b --preset edm2-img512-s --sdpa --compile --steps 15 --ema.stds=[] --ema.beta=null
b --preset edm2-img512-xl --sdpa --compile --channels-last --steps 10 --zero-stage 2
