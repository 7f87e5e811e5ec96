#!/usr/bin/env bash
# Outage soak: a 2-rank `deepspeed` run on CPU reads its shards from and writes its checkpoints to S3 (moto on
# loopback) through a proxy that takes the store away on a schedule (default: a 30 s refusal, a 30 s restart
# answering 404, a 30 s stall, then a 5-minute refusal), and must end bit-identical to the same run with the store
# always up. Self-checking: prints PASS or FAIL lines and exits non-zero on any FAIL.
#
#   bash benchmarks/fault_outage_soak.sh [OUT=runs/fault-outage-soak]
#   SCHEDULE="refuse:6 404:6 stall:6" GAP_S=4 TOTAL_NIMG=7680 bash benchmarks/fault_outage_soak.sh   # 6 minutes
#
# What it checks, against the reference run (same data, seeds and command, no outages):
#   * the soak run finishes (exit 0 and <run_dir>/DONE), riding out every outage (all shorter than the default
#     data/checkpoint.outage_window_s of 600 s): no shard counted as broken, every checkpoint save complete;
#   * every EMA export and the final checkpoint's trainer state (fp32 master and EMA shards of every rank) are
#     bit-identical, and so is every stats.jsonl row's loss and gradient norm;
#   * each outage is logged once per rank when it starts and once when it ends; the time lost is in stats.jsonl
#     (Data/outage_sec, Checkpoint/outage_sec).
# Environment: SCHEDULE (mode:seconds ..., modes of tests/runtime/store_proxy.py), GAP_S (normal operation between
# outages, default 20), TOTAL_NIMG (default 19200; the run must outlast the schedule, which the script checks). Needs
# the .venv of launchers/quickstart.sh (moto, s3fs). Takes the training time twice plus the outages: 17 minutes with
# the defaults on the shared 2-core development machine (load ~10). Results: $OUT/summary.txt, logs in $OUT/*.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fault-outage-soak}
SCHEDULE=${SCHEDULE:-"refuse:30 404:30 stall:30 refuse:300"}
GAP_S=${GAP_S:-20}
TOTAL_NIMG=${TOTAL_NIMG:-19200}
[[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]] && source .venv/bin/activate
source launchers/require_done.sh
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=""
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 BOTO_CONFIG=/dev/null
rm -rf "$OUT"; mkdir -p "$OUT"
FAILED=0
say() { echo "[soak $(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }
check() { if eval "$2"; then say "PASS $1"; else say "FAIL $1"; FAILED=1; fi; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT

# The store, and the proxy in front of it (its mode comes from a file).
python benchmarks/s3_server.py --quiet --bucket soak --endpoint-file "$OUT/endpoint" > "$OUT/s3_server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s "$OUT/endpoint" ]] && break; sleep 0.2; done
STORE=$(cat "$OUT/endpoint")
echo pass > "$OUT/mode"
python -m tests.runtime.store_proxy --upstream "$STORE" --mode-file "$OUT/mode" --endpoint-file "$OUT/proxy" \
    > "$OUT/proxy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s "$OUT/proxy" ]] && break; sleep 0.2; done
PROXY=$(cat "$OUT/proxy")
say "store $STORE, proxy $PROXY, schedule: $SCHEDULE (gaps ${GAP_S} s), $TOTAL_NIMG images per run"

FSSPEC_S3_ENDPOINT_URL=$STORE python tools/make_shards.py --source sklearn-digits --out s3://soak/digits \
    --resolution 8 --pixels --grayscale --num-shards 8 --progress-s 60 > "$OUT/make_shards.log" 2>&1 \
    || { say "FAIL make_shards (see $OUT/make_shards.log)"; exit 1; }

train() {  # train NAME ENDPOINT: the teacher on 2 ranks, data and checkpoints on s3://soak/NAME via ENDPOINT.
  FSSPEC_S3_ENDPOINT_URL=$2 deepspeed --num_gpus 2 --master_port "${3:-29621}" launchers/train.py \
      --config configs/demo-digits-teacher.yaml --run_dir="$OUT/$1" --data.url=s3://soak/digits/manifest.json \
      --checkpoint.dir="s3://soak/$1/checkpoints" --checkpoint.interval_nimg=3200 --checkpoint.keep_last=2 \
      --train.total_nimg="$TOTAL_NIMG" --train.status_nimg=1280 --ema.export_nimg=6400 --logging.sample_grid=0 \
      --logging.progress=plain --data.num_workers=2 > "$OUT/$1.log" 2>&1
}

outages() {  # Wait for the soak run's first status line, then take the store away as scheduled.
  until grep -q "^kimg " "$OUT/soak.log" 2>/dev/null; do sleep 1; done
  for item in $SCHEDULE; do
    sleep "$GAP_S"
    say "outage: ${item%%:*} for ${item##*:} s"
    echo "${item%%:*}" > "$OUT/mode"
    sleep "${item##*:}"
    echo pass > "$OUT/mode"
    say "outage over"
  done
  say "schedule done"
}

say "reference run (store always up)"
train ref "$STORE" 29621; RC_REF=$?
check "reference run finished (exit $RC_REF)" "[[ $RC_REF == 0 ]] && require_done $OUT/ref"
say "soak run (through the proxy)"
outages &
SCHED=$!
PIDS+=($SCHED)
train soak "$PROXY" 29622; RC=$?
kill $SCHED 2>/dev/null
check "soak run finished through the outages (exit $RC)" "[[ $RC == 0 ]] && require_done $OUT/soak"
check "the whole schedule happened during the soak run" "grep -q 'schedule done' $OUT/summary.txt"

FSSPEC_S3_ENDPOINT_URL=$STORE python - "$OUT" <<'EOF' | tee -a "$OUT/summary.txt"
import glob, json, os, sys

import fsspec
import torch
from safetensors.torch import load

out = sys.argv[1]
fs = fsspec.filesystem("s3")
bad = []


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


ref_ema = sorted(os.path.basename(p) for p in glob.glob(f"{out}/ref/ema/*.safetensors"))
soak_ema = sorted(os.path.basename(p) for p in glob.glob(f"{out}/soak/ema/*.safetensors"))
if not ref_ema or ref_ema != soak_ema:
    bad.append(f"EMA exports differ in names: {ref_ema} vs {soak_ema}")
for name in ref_ema:
    a, b = (load(open(f"{out}/{run}/ema/{name}", "rb").read()) for run in ("ref", "soak"))
    if not same(a, b):
        bad.append(f"EMA export {name} differs")
latest = {run: fs.cat(f"soak/{run}/checkpoints/latest").decode().strip() for run in ("ref", "soak")}
if latest["ref"] != latest["soak"]:
    bad.append(f"latest checkpoints differ: {latest}")
for rank_file in sorted(fs.glob(f"soak/ref/checkpoints/{latest['ref']}/rank-*.safetensors")):
    name = rank_file.rsplit("/", 1)[1]
    a, b = (load(fs.cat(f"soak/{run}/checkpoints/{latest[run]}/{name}")) for run in ("ref", "soak"))
    if not same(a, b):
        bad.append(f"final checkpoint {name} differs")
rows = {run: [json.loads(x) for x in open(f"{out}/{run}/stats.jsonl")] for run in ("ref", "soak")}
keys = lambda row: {k: v for k, v in row.items() if k.startswith(("Loss/", "Grad/")) or k == "kimg"}  # noqa: E731
if [keys(r) for r in rows["ref"]] != [keys(r) for r in rows["soak"]]:
    bad.append("stats.jsonl loss/gradient rows differ")
last = rows["soak"][-1]
lost = {k: last.get(k, 0.0) for k in ("Data/outage_sec", "Checkpoint/outage_sec", "Data/outages")}
skipped = last.get("Data/corrupt_shards_skipped", 0.0)
print(f"soak: {len(ref_ema)} EMA exports, final checkpoint {latest['soak']}, {len(rows['soak'])} stats rows; "
      f"time lost to outages (longest rank): data {lost['Data/outage_sec']:.1f} s, checkpoints "
      f"{lost['Checkpoint/outage_sec']:.1f} s; data outages counted (sum over ranks) {lost['Data/outages']:.0f}; "
      f"shards skipped {skipped:.0f}")
for b in bad:
    print(f"FAIL {b}")
if skipped:
    print("FAIL shards were counted as broken during outages")
    bad.append("skipped")
print("PASS bit-identical to the reference run" if not bad else "FAIL not identical")
sys.exit(1 if bad else 0)
EOF
[[ ${PIPESTATUS[0]} == 0 ]] || FAILED=1
STARTS=$(grep -c "the store is not answering" "$OUT/soak.log")
ENDS=$(grep -c "the store is back after" "$OUT/soak.log")
check "each outage logged at its start and its end ($STARTS starts, $ENDS ends)" "[[ $STARTS -ge 1 && $STARTS == $ENDS ]]"
grep -E "the store is (not answering|back)" "$OUT/soak.log" | cut -c1-200 >> "$OUT/summary.txt"
say "$([[ $FAILED == 0 ]] && echo "ALL PASS" || echo "SOME FAILED") (summary: $OUT/summary.txt)"
exit $FAILED
