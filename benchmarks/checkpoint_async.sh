#!/usr/bin/env bash
# Asynchronous checkpoints on one device (issue 22), self-checking. For each preset, two processes
# (benchmarks/checkpoint_async.py, which says exactly what is timed):
#   save:   the shipped recipe (configs/ect-img512-<p>.yaml: its EMAs, fp16 with the bf16 parameter copy, ZeRO-1) on
#           synthetic ImageNet-512 latents, eager (no compile), batch $S_BATCH (S) / $XL_BATCH (XL) on one GPU;
#           $BASELINE timed steps without saving, then $SAVES asynchronous saves, training on while each is written:
#           blocking time, background time, the extra time of the steps that ran during the write, host memory;
#           then one synchronous save of the same state for comparison (presets in $SYNC_PRESETS: not XL by default);
#   resume: a new process resumes from the last asynchronous save: time to verify and load, whole start-up, and a
#           bit-for-bit comparison of the restored fp32 masters, EMAs and Adam moments with the saved state.
# One JSON line per measurement in $OUT/checkpoint_async.jsonl (and on stdout); logs in $OUT/checkpoint_async-*.log.
# Verified (exit 0 only then): every save succeeded, every resume is exact. Reported next to the issue's targets:
# blocking time of the saves after the first (EDM2-S <= 1.5 s, EDM2-XL <= 3 s), and the share of throughput lost by
# a run saving every 300 s ((blocking + extra step time) / 300, <= 2 %). The first save also allocates and
# page-locks the host buffers; it is reported separately.
#
#   bash benchmarks/checkpoint_async.sh                       # GPU: EDM2-S and EDM2-XL (written to fit ~8-9 minutes)
#   PRESETS=s bash benchmarks/checkpoint_async.sh             # one size per call, if a call is limited to 10 minutes
#   PRESETS=xl SYNC_PRESETS=xl bash benchmarks/checkpoint_async.sh   # XL with its synchronous save too
#   DS_ACCELERATOR=cpu bash benchmarks/checkpoint_async.sh    # CPU: tiny-latent (PRESETS="tiny xs" adds EDM2-XS)
#
# Each preset's legs are limited to $LIMIT_SAVE (400) + $LIMIT_RESUME (180) seconds, so one preset fits a 10-minute call.
# Last line: "checkpoint_async: PASS ..." or "checkpoint_async: FAIL ...".
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/env.sh; device_env checkpoint_async
O=${OUT:-/tmp}
mkdir -p "$O"
JSONL=$O/checkpoint_async.jsonl
: >"$JSONL"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ect_ckpt_async.XXXXXX")
if [[ $DEVICE == gpu ]]; then PRESETS=${PRESETS:-s xl}; else PRESETS=${PRESETS:-tiny}; fi
SAVES=${SAVES:-2}; BASELINE=${BASELINE:-10}; S_BATCH=${S_BATCH:-32}; XL_BATCH=${XL_BATCH:-16}
SYNC_PRESETS=${SYNC_PRESETS:-s tiny xs}  # XL's synchronous save (55.4 s in issue 22) would take the time of the rest
T0=$(date +%s)

COMMON=(--init= --data.kind=synthetic --data.url= --data.synthetic_encoder=sd-vae --data.synthetic_label_dim=1000
        --data.synthetic_resolution=64 --engine.compile=false --engine.precision_check=false --train.total_nimg=1000M
        --checkpoint.interval_nimg=1000M --checkpoint.keep_last=1 --ema.export_nimg=1000M --eval.interval_nimg=0
        --logging.progress=plain --logging.tensorboard=false --logging.sample_grid=0 --train.status_nimg=1000M
        --checkpoint.async_save=true)

leg() {  # leg PRESET LEG LIMIT ARGS...
  local p=$1 which=$2 lim=$3; shift 3
  local t=$(date +%s)
  echo "== $p $which: $*" >>"$O/checkpoint_async-$p.log"
  timeout "$lim" python3 benchmarks/checkpoint_async.py "$which" --name "$p" --out "$JSONL" "$@" \
    >>"$O/checkpoint_async-$p.log" 2>&1
  local rc=$?
  echo "$p $which: exit $rc after $(( $(date +%s) - t )) s"
  return $rc
}

for p in $PRESETS; do
  case $p in
    s|xl) ARGS=(--config "configs/ect-img512-$p.yaml"); B=$S_BATCH; [[ $p == xl ]] && B=$XL_BATCH;;
    xs)   ARGS=(--config configs/ect-img512-xs.yaml); B=2;;
    tiny) ARGS=(--config configs/ect-img512-base.yaml --network.preset=tiny-latent --engine.precision=bf16); B=4;;
    *) echo "checkpoint_async: unknown preset $p"; exit 1;;
  esac
  ARGS+=("${COMMON[@]}" "--run_dir=$WORK/$p" "--checkpoint.staging_dir=$WORK/staging" --train.batch_size=$B --train.batch_gpu=$B)
  [[ $p == tiny ]] && ARGS+=(--data.synthetic_resolution=16 --data.synthetic_label_dim=10)
  [[ $DEVICE == cpu ]] && ARGS+=(--engine.precision=bf16)  # fp16 needs a GPU.
  SYNC=(); [[ " $SYNC_PRESETS " == *" $p "* ]] && SYNC=(--sync-save)
  leg "$p" save "${LIMIT_SAVE:-400}" "${ARGS[@]}" --saves "$SAVES" --baseline "$BASELINE" "${SYNC[@]}"
  leg "$p" resume "${LIMIT_RESUME:-180}" "${ARGS[@]}"
  rm -rf "$WORK/$p"
done
WALL=$(( $(date +%s) - T0 ))

python3 - "$JSONL" "$PRESETS" "$WALL" "$DEVICE" <<'EOF'
import json, sys
path, presets, wall, device = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), sys.argv[4]
rows = [json.loads(l) for l in open(path) if l.startswith("{")]
TARGET = {"s": 1.5, "xl": 3.0}  # Issue 22: blocking seconds per save.
size = lambda gib: f"{gib:.2f} GiB" if gib >= 1 else f"{gib * 1024:.1f} MiB"  # noqa: E731
fails, lines = [], []
for p in presets:
    saves = [r for r in rows if r["name"] == p and r["measure"] == "async_save"]
    resume = [r for r in rows if r["name"] == p and r["measure"] == "resume"]
    sync = [r for r in rows if r["name"] == p and r["measure"] == "sync_save" and "blocking_s" in r]
    if not saves:
        fails.append(f"{p}: no save measured (see checkpoint_async-{p}.log)"); continue
    fails += [f"{p}: save {r['save']} failed: {r['errors']}" for r in saves if not r["ok"]]
    if not resume or not resume[0]["exact"]:
        fails.append(f"{p}: resume not exact or not measured: {resume[0] if resume else 'missing'}")
    later = saves[1:] or saves
    steady = max(r["blocking_s"] for r in later)
    lost = max(r["lost_frac_at_300s"] for r in later)
    t = TARGET.get(p)
    line = (
        f"  {p}: {size(saves[0]['checkpoint_gib'])} per save on {saves[0]['device']}; blocking: first save "
        f"{saves[0]['blocking_s']:.2f} s, later saves <= {steady:.2f} s"
    )
    if t is not None:
        line += f" (target <= {t} s: {'met' if steady <= t else 'NOT met'})"
    if sync:
        line += f", a synchronous save {sync[0]['blocking_s']:.2f} s"
    line += (
        f"; background {max(r['background_s'] for r in later):.1f} s; throughput lost at one save per 300 s "
        f"{100 * lost:.2f} % (target <= 2 %: {'met' if lost <= 0.02 else 'NOT met'}); host buffers "
        f"{size(saves[-1]['host_buffers_gib'])} (pinned: {saves[-1]['pinned']})"
    )
    if resume:
        r = resume[0]
        line += f"; resume: verify {r['verify_s']:.1f} s + load {r['load_s']:.1f} s of {r['startup_s']:.1f} s start-up, exact: {r['exact']}"
    lines.append(line)
for f in fails:
    print(f"  FAILED: {f}")
print("\n".join(lines))
print(f"checkpoint_async: {'PASS' if not fails else 'FAIL'} ({device}, presets {' '.join(presets)}, {wall} s)")
sys.exit(1 if fails else 0)
EOF
STATUS=$?
rm -rf "$WORK"
exit $STATUS
