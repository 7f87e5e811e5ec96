#!/usr/bin/env bash
# The GPU scaling study of docs/scaling.md on one H100/H200, self-checking, in under 9 minutes:
#   ECT on scikit-learn's digits upsampled to 32x32 (the only image dataset an offline GPU host has; 32x32 gives
#   the EDM2 U-Net three levels, 32/16/8 px, as on CIFAR-10), EDM2 U-Nets of width 32/64/128 (1.2M/4.8M/19.2M
#   parameters, presets demo-digits32-w*), each with its own teacher (configs/demo-digits-gpu-w*-teacher.yaml),
#   2 seeds, evaluated along one 65,536-image run per size and seed at 5 budgets from 4,096 images (16x, 1.2
#   decades of compute per width), FD in the features of a digit classifier trained on the same shards.
# Everything goes through the shipped tools: make_shards, train_classifier, fid_ref, launchers/train.py (the
# teachers, 3 at once on the GPU), tools/scaling.py (its 6 runs as 3 workers of 2 runs, then the report).
#
#   bash benchmarks/scaling_gpu.sh        # on the GPU host, from the repository root (with .whl carried)
#
# $OUT gets at most 8 files: scaling-gpu-report.tgz (the whole report folder and the logs), sweep.md, report.md,
# fits.json, points.csv, the two PNGs and timing.txt. Prints "scaling_gpu: PASS ..." when all 30 points are
# measured and every size is fitted for both metrics, "scaling_gpu: FAIL (why)" otherwise.
# Several runs share the GPU at once: FLOPs (the x axis of every fit) are exact, device-hours are not comparable
# with a run that has the GPU alone.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/env.sh
device_env scaling_gpu
[ "$DEVICE" = gpu ] || { echo "scaling_gpu: FAIL (no GPU: this script measures the GPU study)"; exit 1; }
OUT=${OUT:-/tmp/scaling_gpu-out}
O=/tmp/scaling_gpu; mkdir -p "$OUT" "$O"
SWEEP=configs/sweeps/digits32-gpu.yaml
D=runs/scaling-digits32
T0=$SECONDS
LIMIT=${SCALING_GPU_LIMIT_S:-500}   # Every phase ends by then; the report (about 20 s) and the checks follow.
left() { local l=$((LIMIT - (SECONDS - T0))); [ "$l" -lt 1 ] && l=1; [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }  # min(cap, left), >= 1
: > "$O/timing.txt"
phase() { echo "[scaling_gpu] $1 (at $((SECONDS - T0)) s)" | tee -a "$O/timing.txt"; }
fail() { phase "FAIL: $1"; finish; echo "scaling_gpu: FAIL ($1)"; exit 1; }
finish() {
  tar czf "$OUT/scaling-gpu-report.tgz" "$D/points/report" "$O" $D/points/*/train.log 2>/dev/null
  cp "$O/timing.txt" "$OUT/" 2>/dev/null
  cp "$D/points/report/sweep.md" "$D/points/report/report.md" "$D/points/report/fits.json" \
     "$D/points/report/points.csv" "$D/points/report/"*.png "$OUT/" 2>/dev/null
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$O/timing.txt"

phase "data: sklearn digits -> 32x32 grayscale shards"
timeout "$(left 60)" python3 tools/make_shards.py --source sklearn-digits --out $D/data --resolution 32 --pixels --grayscale \
    --num-shards 8 > "$O/shards.log" 2>&1 || fail "make_shards: $(tail -1 "$O/shards.log")"
phase "offline metric: classifier and reference statistics"
timeout "$(left 180)" python3 tools/train_classifier.py --data $D/data/manifest.json --out $D/classifier.safetensors \
    --threads 8 > "$O/classifier.log" 2>&1 || fail "train_classifier: $(tail -1 "$O/classifier.log")"
timeout "$(left 60)" python3 tools/fid_ref.py --shards $D/data/manifest.json --classifier $D/classifier.safetensors \
    --out $D/ref.npz > "$O/ref.log" 2>&1 || fail "fid_ref: $(tail -1 "$O/ref.log")"

phase "teachers: 3 at once on the GPU (configs/demo-digits-gpu-w{32,64,128}-teacher.yaml)"
pids=()
for w in 32 64 128; do
  timeout "$(left 200)" python3 launchers/train.py --config configs/demo-digits-gpu-w$w-teacher.yaml \
      --logging.progress=plain > "$O/teacher-w$w.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do wait "${pids[$i]}" || fail "teacher $i: $(grep -E '^error' "$O"/teacher-w*.log | head -1)"; done
python3 tools/scaling.py $SWEEP status > "$O/status-0.txt" 2>&1 || fail "sweep file: $(tail -1 "$O/status-0.txt")"

phase "sweep: 6 runs as 3 workers of 2 (one per size), then the report"
pids=()
for runs in "0 1" "2 3" "4 5"; do
  timeout "$(left 300)" python3 tools/scaling.py $SWEEP run --only $runs > "$O/sweep-${runs// /-}.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
python3 tools/scaling.py $SWEEP status > "$O/status.txt" 2>&1
cat "$O/status.txt" | tee -a "$O/timing.txt"
if [ $rc != 0 ]; then   # Report what was measured, then fail.
  python3 tools/scaling.py $SWEEP report --partial > "$O/report.log" 2>&1
  fail "a sweep worker failed or ran out of time: $(grep -h '^error' "$O"/sweep-*.log | head -1)"
fi
python3 tools/scaling.py $SWEEP report > "$O/report.log" 2>&1
report_rc=$?
cat "$O/report.log" | tee -a "$O/timing.txt"
phase "report exit code $report_rc"
finish

python3 - "$D/points/report" <<'PY' | tee -a "$O/timing.txt"
import json, sys
folder = sys.argv[1]
summary = json.load(open(f"{folder}/sweep.json"))
points = json.load(open(f"{folder}/points.json"))["points"]
ok = sum(p["status"] == "ok" for p in points)
fits = json.load(open(f"{folder}/fits.json"))
problems = [] if ok == len(points) == 30 else [f"{ok} of {len(points)} points measured (expected 30)"]
for metric, data in fits["metrics"].items():
    for size, d in data["sizes"].items():
        if not d["fitted"]:
            problems.append(f"{metric} {size} not fitted: {d['reason']}")
            continue
        f = d["fits"][d["chosen"]]
        hold = d.get("holdout_largest", {})
        print(f"{metric} {size}: {d['chosen']} b={f['params']['b']:.3g} CI [{f['ci']['b'][0]:.3g}, {f['ci']['b'][1]:.3g}]"
              f" R2={f['r2_log']:.3f} noise={d['seed_noise']['pooled_rel_std']} holdout={hold.get('rel_error')}")
for row in summary["sizes"]:
    print(f"size {row['size']}: {row['params']:,} params, {row['train_flops_per_img']:.3g} training FLOPs/img")
print("CHECK " + ("ok" if not problems else "; ".join(problems)))
PY
grep -q "^CHECK ok" "$O/timing.txt" || { cp "$O/timing.txt" "$OUT/"; echo "scaling_gpu: FAIL ($(grep '^CHECK' "$O/timing.txt"))"; exit 1; }
[ $report_rc = 0 ] || { echo "scaling_gpu: FAIL (report exit code $report_rc: $(grep '^error' "$O/report.log"))"; exit 1; }
cp "$O/timing.txt" "$OUT/"
echo "scaling_gpu: PASS (30 points, 3 sizes fitted for both metrics, $((SECONDS - T0)) s; report in \$OUT)"
