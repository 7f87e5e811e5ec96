# Shared preamble of the benchmark scripts (source it from the repository root).
#   device_env NAME      self-checking scripts: sets DEVICE (gpu|cpu) and STEP_TIMEOUT. CPU (gloo) when
#                        DS_ACCELERATOR=cpu or nvidia-smi is absent (activates .venv); GPU: the carried wheels and
#                        NCCL with multicast off.
#   round_env NAME       GPU benchmark rounds: as above, plus the log folder $O=/tmp/NAME, the GPU list, $RO.
#   b N LIMIT ARGS...    one `launchers/bench.py ARGS` job on N processes under torchrun (honours
#                        CUDA_VISIBLE_DEVICES; full log in $O/${LOG:-b}.last); prints the command, rc and JSON line.
#   collect NAME         copies $O/bench.jsonl and a tarball of $O to $OUT (the device returns at most 8 files).
#   gated NAME PORT ARGS...  one `launchers/bench.py ARGS` job that compiles alongside others and is timed alone
#                        (TimingGate in $G with $GATE_N members, limits $JOB_S / $GATE_S); JSON to $R/bench.jsonl,
#                        log in $O/NAME.log. A job that dies is still counted as ready, so the others do not wait.
#                        Logs its rc through the calling script's `log`.

device_env() {
  if [[ "${DS_ACCELERATOR:-}" == cpu ]] || ! command -v nvidia-smi >/dev/null 2>&1; then
    DEVICE=cpu STEP_TIMEOUT=900
    export DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1
    [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]] && source .venv/bin/activate
  else
    DEVICE=gpu STEP_TIMEOUT=300
    source benchmarks/setup_gpu.sh || { echo "$1: FAIL (benchmarks/setup_gpu.sh failed)"; exit 1; }
    set +e
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # Keep multicast off.
  fi
  export PYTHONUNBUFFERED=1
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # The scripts import tests/ helpers and the package in place.
}

round_env() {
  device_env "$1"
  O=/tmp/$1; mkdir -p "$O"
  nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$O/gpus.txt"
  RO="--sdpa --compile --channels-last --compile-mode reduce-overhead"
}

b() {
  local n=$1 lim=$2 log=$O/${LOG:-b}.last; shift 2
  echo "== [${CUDA_VISIBLE_DEVICES:-all}] $n GPU: $*"
  timeout "$lim" torchrun --standalone --nproc_per_node "$n" launchers/bench.py --out "$O/bench.jsonl" "$@" > "$log" 2>&1
  echo "rc=$?"; grep -E "^\{|Error|out of memory" "$log" | tail -2 | cut -c1-700
}

collect() {
  cp "$O/bench.jsonl" "${OUT:-/tmp}/$1-bench.jsonl" 2>/dev/null; tar czf "${OUT:-/tmp}/$1-logs.tgz" -C "$O" .
}

gated() {
  local name=$1 port=$2; shift 2
  MASTER_PORT=$port timeout "${JOB_S:-450}" python3 launchers/bench.py --gate "$G" --gate-count "${GATE_N:-2}" \
    --gate-name "$name" --gate-timeout "${GATE_S:-400}" --out "$R/bench.jsonl" --run_dir="/tmp/bench-$name" \
    --engine.precision_check=false "$@" > "$O/$name.log" 2>&1
  local rc=$?
  touch "$G/ready.$name"
  log "$name rc=$rc $(grep -E 'Error|error:' "$O/$name.log" | tail -1 | cut -c1-300)"
}
