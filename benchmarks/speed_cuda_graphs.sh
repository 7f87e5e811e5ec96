#!/usr/bin/env bash
# Round 4 (final single-GPU numbers): CUDA graphs (reduce-overhead) and combo kernels against the compiled default.
set -uo pipefail
source benchmarks/setup_gpu.sh
export PYTHONUNBUFFERED=1
OUTF=${OUT:-/tmp}/bench.jsonl
b() { echo "== $*"; timeout $1 python3 launchers/bench.py --out $OUTF "${@:2}" 2>&1 | grep -E "^\{|Error|error" | tail -3 | cut -c1-400; }
CL="--sdpa --compile --channels-last"
b 150 --preset edm2-img512-s $CL --compile-mode reduce-overhead --steps 30
b 220 --preset edm2-img512-xl $CL --compile-mode reduce-overhead --steps 15
b 110 --preset edm2-img512-s $CL --steps 30
b 110 --preset edm2-img512-s $CL --combo-kernels --steps 30
