#!/usr/bin/env bash
# Round 3: after removing per-step host syncs and with NHWC attention: channels-last + compile on one GPU.
set -uo pipefail
source benchmarks/setup_gpu.sh
export PYTHONUNBUFFERED=1
OUTF=${OUT:-/tmp}/bench.jsonl
b() { echo "== $*"; timeout 400 python3 launchers/bench.py --out $OUTF "$@" 2>&1 | grep -E "^\{" | python3 -c "import json,sys; [print({k: (round(v,3) if isinstance(v,float) else v) for k,v in json.loads(l).items() if k in ('preset','batch_gpu','img_per_sec','mfu','peak_mem_gb','data_wait_frac','sec_per_step')}) for l in sys.stdin]"; }
b --preset edm2-img512-s --sdpa --compile --steps 20
b --preset edm2-img512-s --sdpa --compile --channels-last --steps 20
timeout 300 python3 benchmarks/profile_step.py --preset edm2-img512-s --sdpa --compile --channels-last > ${OUT:-/tmp}/profile_s_cl.txt 2>&1; grep -E "wall/step" ${OUT:-/tmp}/profile_s_cl.txt
b --preset edm2-img512-xl --sdpa --compile --channels-last --steps 12
b --preset edm2-img512-s --sdpa --compile --channels-last --steps 12 --batch-gpu 64
b --preset edm2-img512-xl --sdpa --compile --channels-last --steps 8 --batch-gpu 64
