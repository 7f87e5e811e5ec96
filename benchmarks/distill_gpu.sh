#!/usr/bin/env bash
# GPU speed and memory of the distillation objectives next to ECT (docs/distillation.md, BENCHMARKS.md), one GPU,
# self-checking, about 5-8 minutes on one H100/H200 (no compile; every run is a fresh process):
#   for EDM2-S and EDM2-XL (synthetic ImageNet-512 latents, batch 32, bf16, ZeRO-1, sdpa, channels-last, eager):
#     ect  the ECT step (reference)
#     ecd  ECT + a Heun step of a frozen teacher of the same preset (random weights; made once per preset)
#     cd   consistency distillation: the teacher step + theta-'s forward + theta-'s per-step gather
#   each line: img/s, sec/step, peak allocated/reserved GB, the teacher replica's GB, the teacher's Heun step alone
#   (2 forwards, no_grad, one micro-batch), CD's theta- gather alone; plus, for S, ECD with tf32 compute (an fp32
#   teacher replica, the official ECT/sony-cmt precision) to show what the bf16 replica saves.
# Checks: every run printed its line, no skipped steps, a finite loss, replica bytes = parameters x dtype size,
# ECD/CD slower than ECT. Output: $OUT/distill-gpu.jsonl and distill-gpu.txt; exit 1 on any failed check.
# Run (the lead): the device call's command `bash benchmarks/distill_gpu.sh`, carry .whl (benchmarks/setup_gpu.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/env.sh
device_env distill_gpu
R=${OUT:-/tmp/distill_gpu}; L=/tmp/distill_gpu_logs; mkdir -p "$R" "$L"   # $OUT gets 3 files: jsonl, txt, logs.
J=$R/distill-gpu.jsonl; : > "$J"
log() { echo "[$(date +%T)] $*" | tee -a "$R/distill-gpu.txt"; }
[[ $DEVICE == gpu ]] && nvidia-smi --query-gpu=name,memory.total --format=csv | tee -a "$R/distill-gpu.txt"
PRESETS=${PRESETS:-edm2-img512-s edm2-img512-xl}
STEPS=${STEPS:-10}
RUNS=0
run() {  # run NAME ARGS...
  local name=$1; shift
  timeout "${JOB_S:-240}" python3 benchmarks/distill_bench.py --out "$J" --steps "$STEPS" "$@" > "$L/$name.log" 2>&1
  log "$name rc=$? $(grep -E '^\{' "$L/$name.log" | tail -1 | cut -c1-420) $(grep -E '^error' "$L/$name.log" | head -1)"
  RUNS=$((RUNS + 1))
}
for p in $PRESETS; do
  t=/tmp/distill-teacher-$p.safetensors
  for obj in ect ecd cd; do
    run "$p-$obj" --preset "$p" --objective $obj --teacher "$t" "$@"
  done
done
case " $PRESETS " in *" edm2-img512-s "*) run edm2-img512-s-ecd-tf32 --preset edm2-img512-s --objective ecd \
  --teacher /tmp/distill-teacher-edm2-img512-s.safetensors --precision tf32 "$@" ;; esac
python3 - "$J" "$RUNS" <<'EOF' | tee -a "$R/distill-gpu.txt"
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
fail = []
for r in rows:
    name = f"{r['preset']} {r['objective']} {r['precision']}"
    if r["skipped_steps"] or not (r["loss"] is not None and math.isfinite(r["loss"])):
        fail.append(f"{name}: skipped {r['skipped_steps']} steps, loss {r['loss']}")
    if r["objective"] != "ect":
        size = {"bfloat16": 2, "float16": 2, "float32": 4}[r["replica_dtype"]]
        if not r["teacher_param_gb"] > 0 or r["teacher_step_sec"] <= 0:
            fail.append(f"{name}: no teacher measurement")
        print(f"{name}: teacher replica {r['replica_dtype']} {r['teacher_param_gb']:.3f} GB "
              f"({r['teacher_param_gb'] * 2**30 / size / 1e6:.1f}M parameters), Heun step {r['teacher_step_sec'] * 1e3:.1f} ms"
              + (f", theta- gather {r['target_refresh_sec'] * 1e3:.1f} ms" if "target_refresh_sec" in r else ""))
by = {(r["preset"], r["objective"], r["precision"]): r for r in rows}
for (p, obj, prec), r in sorted(by.items()):
    ref = by.get((p, "ect", prec))
    if ref is None or obj == "ect":
        continue
    ratio = r["sec_per_step"] / ref["sec_per_step"]
    mem = (f"; peak {r['peak_mem_gb']:.2f} GB vs {ref['peak_mem_gb']:.2f} GB (+{r['peak_mem_gb'] - ref['peak_mem_gb']:.2f})"
           if r["peak_mem_gb"] is not None else "")
    print(f"{p} {prec}: {obj} {r['img_per_sec']:.1f} img/s vs ect {ref['img_per_sec']:.1f} ({ratio:.2f}x the step time){mem}")
    if ratio <= 1:
        fail.append(f"{p} {obj}: not slower than ECT ({ratio:.2f}x): the teacher cannot be free")
if len(rows) != int(sys.argv[2]):
    fail.append(f"{len(rows)} of {sys.argv[2]} runs printed a result (see the logs)")
print("distill_gpu:", "PASS" if not fail else "FAIL " + "; ".join(fail))
sys.exit(1 if fail else 0)
EOF
rc=${PIPESTATUS[0]}
tar czf "$R/distill-gpu-logs.tgz" -C "$L" . 2>/dev/null
exit "$rc"
