#!/usr/bin/env bash
# Fault soak (issue 22): random SIGKILLs of a digits ECT run, restarted each time, ending bit-identical to an
# uninterrupted run. CPU, 2 ranks under the real `deepspeed` launcher (gloo), the quickstart's data and recipe.
#   1. data: scikit-learn's 8x8 digits -> shards (tools/make_shards.py); a short teacher (configs/demo-digits-teacher
#      .yaml, $TEACHER_NIMG images) whose EMA export is the ECT run's init;
#   2. reference: the ECT run (configs/demo-digits.yaml, $TOTAL_NIMG images: twice the recipe's, 4 stages of
#      $STAGE_NIMG) uninterrupted, with a checkpoint and its EMA export every $CKPT_NIMG images (ema.export_nimg: 0:
#      the exports a kill between commit and export would lose);
#   3. victim: the same command, SIGKILLed $KILLS times (the whole process group: launcher, ranks and data workers,
#      like a lost node), $KILL_MIN-$KILL_MAX s after the session's first status row (training under way), or (every
#      4th kill) after its launch, which hits start-up and the resume itself; restarted after each kill with a fresh
#      port; two sessions in three save asynchronously, one synchronously (checkpoint.async_save); then it runs to
#      the end;
#   4. store outages (STORE_KIND=s3, the default): data and checkpoints live on a loopback S3 server (moto,
#      benchmarks/s3_server.py); the killed run reaches it through the fault proxy of issue 22 part A
#      (tests/runtime/store_proxy.py), which refuses every connection for $OUTAGES seconds (30 and 300 by default),
#      $OUTAGE_DELAY s after the first sessions start training (outage_hook; OUTAGE_CMD replaces it). The
#      uninterrupted run uses the server directly. A session's kill clock runs on while the store is out, so a kill
#      may strike during an outage and the restart then start while the store is still out (taking the run folder's
#      lock and the resume ride it out); KILL_DURING_OUTAGE=0 stops the clock while the store is out (every session
#      rides its outage out and is killed after it). STORE_KIND=local: local shards and checkpoints, outages only
#      through OUTAGE_CMD.
# Verified: $KILLS kills happened; every session ended by a kill or with exit 0; the victim's final checkpoint (online
# weights and every EMA, consolidated), every EMA export (same tensors bit for bit, same metadata) and every stats
# row's losses equal the reference's. fault_soak.json lists each session (kill, async or not, where it resumed).
# WORK=<folder> reuses its data, teacher and finished reference (remove <folder>/run to start the victim again).
#
#   bash benchmarks/fault_soak.sh                         # 20 kills, S3 outages; 35 min on 2 CPU cores, teacher reused
#   KILLS=5 bash benchmarks/fault_soak.sh                 # a shorter soak
#   STORE_KIND=local bash benchmarks/fault_soak.sh         # local disk, no outages
#
# Logs and the result in ${OUT:-/tmp}: fault_soak.log (every session), fault_soak.json. Last line:
# "fault_soak: PASS ..." or "fault_soak: FAIL ...". Exit status 0 only on PASS.
set -uo pipefail
cd "$(dirname "$0")/.."
export DS_ACCELERATOR=cpu
source benchmarks/env.sh; device_env fault_soak
O=${OUT:-/tmp}; mkdir -p "$O"
KILLS=${KILLS:-20}; KILL_MIN=${KILL_MIN:-6}; KILL_MAX=${KILL_MAX:-18}; SEED=${SEED:-22}
CKPT_NIMG=${CKPT_NIMG:-1920}; TEACHER_NIMG=${TEACHER_NIMG:-6400}; OUTAGES=${OUTAGES:-30 300}
TOTAL_NIMG=${TOTAL_NIMG:-61440}; STAGE_NIMG=${STAGE_NIMG:-15360}  # Twice the recipe's length (4 stages kept): room for 20 kills.
read -r -a STORE <<<"${STORE_ARGS:-}"
STORE_KIND=${STORE_KIND:-s3}; OUTAGE_DELAY=${OUTAGE_DELAY:-3}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/ect_soak.XXXXXX")}
LOG=$O/fault_soak.log; RESULT=$O/fault_soak.json; SESSIONS=$WORK/sessions.jsonl
: >"$LOG"; : >"$SESSIONS"
T0=$(date +%s)
RANDOM=$SEED
BIN=$(dirname "$(command -v python3)")

port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "fault_soak: $KILLS kills, store $STORE_KIND, work folder $WORK, log $LOG"
DATA=$WORK/data; REF_CKPT=$WORK/ref/checkpoints; RUN_CKPT=$WORK/run/checkpoints
DIRECT=(); THROUGH=()  # Environment of the uninterrupted runs and of the killed run (s3: direct / through the proxy).
if [[ $STORE_KIND == s3 ]]; then  # A loopback S3 server and part A's fault proxy (tests/runtime/store_proxy.py).
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 BOTO_CONFIG=/dev/null
  PIDS=(); trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done' EXIT
  rm -f "$WORK/endpoint" "$WORK/proxy"; echo pass >"$WORK/mode"
  python3 benchmarks/s3_server.py --quiet --bucket soak --endpoint-file "$WORK/endpoint" >"$WORK/s3_server.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [[ -s $WORK/endpoint ]] && break; sleep 0.2; done
  python3 -m tests.runtime.store_proxy --upstream "$(cat "$WORK/endpoint")" --mode-file "$WORK/mode" \
    --endpoint-file "$WORK/proxy" >"$WORK/proxy.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [[ -s $WORK/proxy ]] && break; sleep 0.2; done
  DIRECT=(env "FSSPEC_S3_ENDPOINT_URL=$(cat "$WORK/endpoint")"); THROUGH=(env "FSSPEC_S3_ENDPOINT_URL=$(cat "$WORK/proxy")")
  DATA=s3://soak/digits; REF_CKPT=s3://soak/ref/checkpoints; RUN_CKPT=s3://soak/run/checkpoints
  refuse_for() { echo refuse >"$WORK/mode"; sleep "$1"; echo pass >"$WORK/mode"; }
  OUTAGE_CMD=${OUTAGE_CMD:-refuse_for}
  rm -rf "$WORK/ref" "$WORK/ref.log" "$WORK/run"  # The store lives in memory: everything on it starts afresh.
fi
if [[ $STORE_KIND == s3 || ! -f $WORK/data/manifest.json ]]; then
  "${DIRECT[@]}" python3 tools/make_shards.py --source sklearn-digits --out "$DATA" --resolution 8 --pixels \
    --grayscale --num-shards 8 >>"$LOG" 2>&1 || { echo "fault_soak: FAIL (make_shards)"; exit 1; }
fi
if [[ ! -d $WORK/teacher/ema ]]; then
  "${DIRECT[@]}" "$BIN/deepspeed" --num_gpus 2 --master_port "$(port)" launchers/train.py \
    --config configs/demo-digits-teacher.yaml "--run_dir=$WORK/teacher" "--data.url=$DATA/manifest.json" \
    "--train.total_nimg=$TEACHER_NIMG" --logging.sample_grid=0 --logging.progress=plain >>"$LOG" 2>&1 \
    || { echo "fault_soak: FAIL (teacher)"; exit 1; }
fi
INIT=$(ls "$WORK"/teacher/ema/*.safetensors | tail -1)
ARGS=(--config configs/demo-digits.yaml "--init=$INIT" "--data.url=$DATA/manifest.json"
      "--train.total_nimg=$TOTAL_NIMG" "--ect.stage_nimg=$STAGE_NIMG"
      "--checkpoint.interval_nimg=$CKPT_NIMG" --ema.export_nimg=0 --ema.export_dtype=float32 --checkpoint.keep_last=3
      --logging.sample_grid=0 --logging.progress=plain --logging.tensorboard=false --train.status_nimg=640
      --eval.interval_nimg=0 "${STORE[@]}")

# One invocation of the run in its own process group; prints "<exit> <seconds> <how> <store at launch> <store at the
# kill>" when it is over (store: pass, or refuse while the fault proxy refuses connections).
# $1 run dir, $2 session log, $3 kill mode (none | launch | training), $4 delay (s), $5 async_save.
session() {
  local run=$1 slog=$2 mode=$3 delay=$4 async=$5 t=$SECONDS env=("${DIRECT[@]}") ckpt=$REF_CKPT
  [[ $run == "$WORK/run" ]] && env=("${THROUGH[@]}") && ckpt=$RUN_CKPT
  "${env[@]}" setsid "$BIN/deepspeed" --num_gpus 2 --master_port "$(port)" launchers/train.py "${ARGS[@]}" \
    "--run_dir=$run" "--checkpoint.dir=$ckpt" "--checkpoint.async_save=$async" >"$slog" 2>&1 &
  local pid=$! how=finished rows at_start at_kill=-
  at_start=$(cat "$WORK/mode" 2>/dev/null || echo pass)
  rows=$(cat "$run/stats.jsonl" 2>/dev/null | wc -l)
  if [[ $mode != none ]]; then
    if [[ $mode == training ]]; then  # The clock starts at the session's first status row: training is under way.
      while kill -0 "$pid" 2>/dev/null && (( $(cat "$run/stats.jsonl" 2>/dev/null | wc -l) <= rows )); do
        sleep 0.2
      done
    fi
    local left=$(( delay * 5 ))  # Fifths of a second; with KILL_DURING_OUTAGE=0 it stands still while the store is out.
    while kill -0 "$pid" 2>/dev/null && (( left > 0 )); do
      sleep 0.2
      [[ ${KILL_DURING_OUTAGE:-1} == 1 || $(cat "$WORK/mode" 2>/dev/null) != refuse ]] && left=$(( left - 1 ))
    done
    if kill -0 "$pid" 2>/dev/null; then
      at_kill=$(cat "$WORK/mode" 2>/dev/null || echo pass)
      kill -KILL -- "-$pid" 2>/dev/null; how=killed
    fi
  fi
  wait "$pid"; local rc=$?
  for p in $(pgrep -f -- "--run_dir=$run" || true); do kill -KILL "$p" 2>/dev/null; done  # Anything left over.
  echo "$rc $(( SECONDS - t )) $how $at_start $at_kill"
}

# Store outages during the victim's sessions, $OUTAGE_DELAY s after the session's first status row (a kill may then
# strike during the outage, and the next session start while the store is still out): `$OUTAGE_CMD <seconds>`
# (STORE_KIND=s3: refuse_for, which sets the fault proxy to refuse connections for that long).
outage_hook() {
  local secs=$1
  if [[ -z ${OUTAGE_CMD:-} ]]; then
    echo "{\"outage_s\": $secs, \"skipped\": \"no store to take away (STORE_KIND=s3, or OUTAGE_CMD)\"}" >>"$SESSIONS"
    return
  fi
  local rows; rows=$(cat "$WORK/run/stats.jsonl" 2>/dev/null | wc -l)
  ( while (( $(cat "$WORK/run/stats.jsonl" 2>/dev/null | wc -l) <= rows )); do sleep 0.2; done  # Training again.
    sleep "$OUTAGE_DELAY"; t=$(( $(date +%s) - T0 )); $OUTAGE_CMD "$secs" >>"$LOG" 2>&1
    echo "{\"outage_s\": $secs, \"rc\": $?, \"from_s\": $t, \"to_s\": $(( $(date +%s) - T0 ))}" >>"$SESSIONS" ) &
  OUTAGE_PIDS+=($!)
}

echo "== reference" >>"$LOG"
if ! grep -q "^Finished" "$WORK/ref.log" 2>/dev/null; then
  read -r rc secs how at_start at_kill < <(session "$WORK/ref" "$WORK/ref.log" none 0 true)
  cat "$WORK/ref.log" >>"$LOG"
  echo "{\"session\": \"reference\", \"exit\": $rc, \"sec\": $secs}" >>"$SESSIONS"
  echo "reference: exit $rc after $secs s"
fi

read -r -a OUT_LIST <<<"$OUTAGES"
OUTAGE_PIDS=()
for (( k = 1; k <= KILLS; k++ )); do
  mode=training; (( k % 4 == 0 )) && mode=launch
  delay=$(( KILL_MIN + RANDOM % (KILL_MAX - KILL_MIN + 1) ))
  async=true; (( k % 3 == 0 )) && async=false
  (( k <= ${#OUT_LIST[@]} )) && outage_hook "${OUT_LIST[k-1]}"
  slog=$WORK/session$k.log
  read -r rc secs how at_start at_kill < <(session "$WORK/run" "$slog" "$mode" "$delay" "$async")
  { echo "== session $k: kill $mode+${delay}s async=$async -> $how (exit $rc, $secs s)"; cat "$slog"; } >>"$LOG"
  resumed=$(grep -o "resumed from [^ ]* at [0-9,]* images" "$slog" 2>/dev/null | head -1)
  echo "{\"session\": $k, \"mode\": \"$mode\", \"delay\": $delay, \"async\": $async, \"how\": \"$how\", \"exit\": $rc, \"sec\": $secs, \"resumed\": \"$resumed\", \"store_at_launch\": \"$at_start\", \"store_at_kill\": \"$at_kill\", \"trained\": $(grep -q '^kimg ' "$slog" 2>/dev/null && echo true || echo false)}" >>"$SESSIONS"
  echo "session $k: kill $mode+${delay}s async=$async -> $how (exit $rc, $secs s; store $at_start at launch, $at_kill at the kill) ${resumed}"
  [[ $how == finished && $rc == 0 ]] && break  # A crash (not a kill) is a failure of the soak; it goes on.
done
read -r rc secs how at_start at_kill < <(session "$WORK/run" "$WORK/final.log" none 0 true)
{ echo "== final session: exit $rc"; cat "$WORK/final.log"; } >>"$LOG"
echo "{\"session\": \"final\", \"exit\": $rc, \"sec\": $secs}" >>"$SESSIONS"
echo "final session: exit $rc after $secs s"
for p in "${OUTAGE_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done  # Each has ended by now.
WALL=$(( $(date +%s) - T0 ))

"${DIRECT[@]}" python3 - "$WORK" "$SESSIONS" "$RESULT" "$WALL" "$KILLS" "$REF_CKPT" "$RUN_CKPT" <<'EOF'
import json, os, sys
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from ect_scale.checkpoint.export import consolidated_network, find_checkpoint

work, sessions_path, result_path, wall, kills_wanted = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ref_ckpt, run_ckpt = sys.argv[6], sys.argv[7]
sessions = [json.loads(l) for l in open(sessions_path)]
fails = []
ref, run = f"{work}/ref", f"{work}/run"
victim = [s for s in sessions if isinstance(s.get("session"), int)]
kills = sum(s["how"] == "killed" for s in victim)
final = [s for s in sessions if s.get("session") == "final"]
if kills < kills_wanted:
    fails.append(f"{kills} kills, wanted {kills_wanted} (the run finished first: raise CKPT_NIMG or lower KILL_MAX)")
if not final or final[0]["exit"] != 0:
    fails.append(f"the final session exited {final[0]['exit'] if final else '?'}")
for s in victim:
    if s["how"] == "finished" and s["exit"] != 0:
        fails.append(f"session {s['session']} exited {s['exit']} without being killed")

def rows(d):
    out = {}
    for line in open(os.path.join(d, "stats.jsonl")):
        r = json.loads(line)
        out[round(r["kimg"] * 1000)] = {k: v for k, v in r.items() if k.startswith("Loss/")}
    return out

a, b = rows(ref), rows(run)
if a != b:
    diff = [n for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)]
    fails.append(f"stats rows differ at {diff[:5]} images")
exports = sorted(os.listdir(f"{ref}/ema"))
for name in exports:
    p, q = f"{ref}/ema/{name}", f"{run}/ema/{name}"
    if not os.path.exists(q):
        fails.append(f"export {name} missing in the killed run"); continue
    ta, tb = load_file(p), load_file(q)
    if sorted(ta) != sorted(tb) or not all(torch.equal(ta[k], tb[k]) for k in ta) or \
            safe_open(p, "pt").metadata() != safe_open(q, "pt").metadata():
        fails.append(f"export {name} differs")
ra, rb = find_checkpoint(ref_ckpt), find_checkpoint(run_ckpt)
for what in ["online"] + json.loads(ra.dest.read_text(ra.tag, "trainer.json"))["ema_profiles"]:
    sa, sb = consolidated_network(ra, what)[0], consolidated_network(rb, what)[0]
    if sorted(sa) != sorted(sb) or not all(torch.equal(sa[k], sb[k]) for k in sa):
        fails.append(f"final checkpoint: {what} differs")
resumed = sum(bool(s["resumed"]) for s in victim)
out_kills = sum(s.get("store_at_kill") == "refuse" for s in victim)  # Kills while the store was out ...
out_starts = sum(s.get("store_at_launch") == "refuse" for s in victim)  # ... and sessions launched while it was.
info = {"kills": kills, "kills_during_outage": out_kills, "launches_during_outage": out_starts, "sessions": len(victim) + 1, "resumed_sessions": resumed, "exports": len(exports),
        "stats_rows": len(a), "final_checkpoint": rb.display(), "wall_s": wall, "fails": fails,
        "outages": [s for s in sessions if "outage_s" in s], "victim_sessions": victim}
json.dump(info, open(result_path, "w"), indent=1)
for f in fails:
    print(f"  FAILED: {f}")
print(f"fault_soak: {'PASS' if not fails else 'FAIL'} ({kills} SIGKILLs ({out_kills} while the store was out, {out_starts} sessions launched while it was), {resumed} resumed sessions, {len(exports)} EMA exports "
      f"and {len(a)} stats rows compared, final {os.path.basename(rb.display())}, {wall} s); outages: "
      + (", ".join(f"{o['outage_s']} s " + ("skipped" if "skipped" in o else f"rc {o['rc']}") for o in info["outages"]) or "none"))
sys.exit(1 if fails else 0)
EOF
