#!/usr/bin/env bash
# Round 13b (one H200): the GPU precision A/B/C of docs/precision.md, and a real run of the compiled CUDA-graph
# setting with checkpoints, a stop and resume, EMA exports and in-loop evaluation.
#   1. digits at 16x16 -> shards; the offline metric's classifier and its reference statistics;
#   2. an EDM2-S teacher pretrained here with EDM2's diffusion loss (benchmarks/abc/teacher.yaml);
#   3. three ECT runs from it at once, same data and seeds, through the last stage: bf16 and tf32 eager, fp16
#      compiled with CUDA graphs + in-loop FD_classifier (its log lines are time-stamped); with RESUME=1 the fp16
#      run also stops at the half (slice) and resumes, which needs ECT_S=450 and so more than one 600 s call;
#   4. FD_classifier of the teacher (Heun 32) and of each run's EMA (1 and 2 steps); the gradient's rounding error
#      per stage (tools/precision_report.py --grads) on the teacher and on the fp16 run's final EMA.
# The GPU tests of the precision modes (pytest -m gpu) run alongside steps 1-2; PREC512=s,xl adds the compiled
# precision report at ImageNet-512 shapes during step 3. The teacher and the ECT runs export their EMAs
# periodically and are stopped by a time limit if they run long. The results in docs/precision.md came from
# `PREC512=s bash benchmarks/precision_abc_real_run.sh`, which needed 600 s of an H200 and was cut off during the last
# evaluation (the teacher's, taken from an earlier call with the same EMA file): give it 660 s, or run it where
# a call may last longer.
# SMOKE=1 runs the same pipeline with a tiny network on the CPU (seconds of training), to check the script.
set -uo pipefail
source benchmarks/env.sh; round_env round13b
export TORCHINDUCTOR_COMPILE_THREADS=6
R=$O/abc; mkdir -p "$R"
NET=(); TEACH=(--train.total_nimg=${TEACH_NIMG:-102400} --ema.export_nimg=25600); ECTN=(--ema.export_nimg=16384); EV=5000
TEACH_S=${TEACH_S:-200}; ECT_S=${ECT_S:-330}
if [[ "${SMOKE:-0}" == 1 ]]; then
  NET=(--network.model_channels=16 --network.channel_mult=[1,2] --network.num_blocks=1 --network.attn_resolutions=[8]
       --network.channels_per_head=16)
  TEACH=(--train.total_nimg=1024 --train.batch_size=64 --train.batch_gpu=64 --train.status_nimg=512)
  ECTN=(--train.total_nimg=1024 --ect.stage_nimg=256 --train.batch_size=64 --train.batch_gpu=64 --train.status_nimg=256
        --ema.export_nimg=512 --checkpoint.interval_nimg=512)
  EV=200
fi
HALF=$([[ "${SMOKE:-0}" == 1 ]] && echo 512 || echo 32768)
say() { echo "[$(date +%T)] $*"; }

stamp() { while IFS= read -r l; do printf '%(%T)T %s\n' -1 "$l"; done; }
if [[ "${SMOKE:-0}" != 1 ]]; then
  ( timeout 280 python3 -m pytest -q -m gpu -p no:cacheprovider tests/precision/test_gpu_modes.py -s \
      > "${OUT:-/tmp}/pytest-gpu.txt" 2>&1; say "pytest -m gpu rc=$? $(tail -1 "${OUT:-/tmp}/pytest-gpu.txt")" ) &
fi
say "data, classifier, reference statistics"
python3 tools/make_shards.py --source sklearn-digits --out "$R/data" --resolution 16 --pixels --grayscale \
  --num-shards 16 --progress-s 600 > "$R/shards.log" 2>&1 || { echo "shards failed"; tail -5 "$R/shards.log"; }
python3 tools/train_classifier.py --data "$R/data/manifest.json" --out "$R/classifier.safetensors" --threads 8 2>&1 | tail -2
python3 tools/fid_ref.py --shards "$R/data/manifest.json" --classifier "$R/classifier.safetensors" --out "$R/ref.npz" \
  --metrics fd_classifier --progress none > "$R/ref.log" 2>&1; echo "ref rc=$?"

say "teacher"
MASTER_PORT=29610 timeout $TEACH_S python3 launchers/train.py --config benchmarks/abc/teacher.yaml --run_dir="$R/teacher" \
  --data.url="$R/data/manifest.json" "${NET[@]}" "${TEACH[@]}" > "$R/teacher.log" 2>&1; echo "teacher rc=$?"
grep -E "^kimg" "$R/teacher.log" | tail -2
TEACHER=$(ls "$R"/teacher/ema/*.safetensors | tail -1)

say "ECT: bf16, tf32 (eager) and fp16 (compiled, CUDA graphs, in-loop evaluation, stop at the half and resume)"
COMMON=(--config benchmarks/abc/ect.yaml --init="$TEACHER" --data.url="$R/data/manifest.json" "${NET[@]}" "${ECTN[@]}")
FAST=(--engine.compile=true --engine.compile_mode=reduce-overhead --engine.channels_last=true --network.attention=sdpa
      --eval.interval_nimg=$HALF --eval.metrics=[fd_classifier] --eval.classifier_path="$R/classifier.safetensors"
      --eval.ref_stats="$R/ref.npz" --eval.num_samples=2000 --eval.batch_gpu=500)
[[ "${RESUME:-0}" == 1 ]] && FAST+=(--train.slice_nimg=$HALF)
run() { local port=$1 mode=$2; shift 2
  MASTER_PORT=$port timeout $((ECT_END - SECONDS)) python3 launchers/train.py "${COMMON[@]}" --run_dir="$R/ect-$mode" \
    --engine.precision=$mode "$@" 2>&1 | stamp >> "$R/ect-$mode.log"; say "ect-$mode rc=${PIPESTATUS[0]}"; }
ECT_END=$((SECONDS + ECT_S))
run 29611 bf16 &
run 29612 tf32 &
( run 29613 fp16 "${FAST[@]}"; [[ "${RESUME:-0}" == 1 ]] && { say "fp16: resuming"; run 29613 fp16 "${FAST[@]}"; } ) &
if [[ -n "${PREC512:-}" ]]; then  # e.g. PREC512=s,xl: the compiled report at ImageNet-512 shapes meanwhile.
  ( for p in ${PREC512//,/ }; do
      timeout $((ECT_END - SECONDS)) python3 tools/precision_report.py --preset edm2-img512-$p --gain 1 \
        --config configs/ect-img512-$p.yaml --stages 3 --modes bf16,fp16,tf32 --compile \
        --out "${OUT:-/tmp}/prec512-$p-compiled.json" > "${OUT:-/tmp}/prec512-$p-compiled.txt" 2>&1
      say "compiled precision report $p rc=$?"
    done ) &
fi
wait
grep -hE "compile:|precision|Stopping|Stopped at|Finished|resumed|eval\]|Timeout" "$R"/ect-fp16.log | cut -c1-220

say "evaluation (FD_classifier, $EV samples) and rounding error per stage (forward and gradient), side by side"
EVAL=(--classifier "$R/classifier.safetensors" --ref "$R/ref.npz" --num-samples $EV --batch-gpu 500 --progress none)
ev() { local name=$1; shift; python3 launchers/evaluate.py "$@" "${EVAL[@]}" --out "$R/eval-$name.json" \
  > "$R/eval-$name.log" 2>&1; say "eval $name rc=$?"; }
ev teacher --net "$TEACHER" --sampler heun --heun-steps 32 &
for m in bf16 tf32 fp16; do
  for ema in power-0.050 power-0.100; do
    f=$(ls "$R"/ect-$m/ema/*-$ema.safetensors 2>/dev/null | tail -1)
    [[ -n "$f" ]] && ev $m-$ema --net "$f" --steps 1,2 --t-mid 1.526 &
  done
done
python3 tools/precision_report.py --net "$TEACHER" --config benchmarks/abc/ect.yaml --stages 0,1,2,3 --grads \
  --modes bf16,fp16,fp16@bf16,tf32 --samples 64 --data "$R/data/manifest.json" --out "$R/prec-teacher.json" \
  > "$R/prec-teacher.txt" 2>&1 &
F16=$(ls "$R"/ect-fp16/ema/*-power-0.100.safetensors 2>/dev/null | tail -1)
[[ -n "$F16" ]] && python3 tools/precision_report.py --net "$F16" --config benchmarks/abc/ect.yaml --stages 3 --grads \
  --modes bf16,fp16,tf32 --samples 64 --data "$R/data/manifest.json" --out "$R/prec-ect-fp16.json" \
  > "$R/prec-ect-fp16.txt" 2>&1 &
wait
tail -24 "$R/prec-teacher.txt"; tail -8 "$R/prec-ect-fp16.txt" 2>/dev/null

say "collect"
python3 - "$R" <<'EOF'
import glob, json, os, sys
R = sys.argv[1]
out = {"stats": {}, "eval": {}, "precision": {}}
for run in ("teacher", "ect-bf16", "ect-tf32", "ect-fp16"):
    p = os.path.join(R, run, "stats.jsonl")
    out["stats"][run] = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
for p in glob.glob(os.path.join(R, "eval-*.json")):
    out["eval"][os.path.basename(p)[5:-5]] = json.load(open(p))["networks"][0]["results"]
for p in glob.glob(os.path.join(R, "prec-*.json")):
    out["precision"][os.path.basename(p)[5:-5]] = json.load(open(p))
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "round13b.json"), "w"))
for k, v in sorted(out["eval"].items()):
    print(k, {s: {m: round(r["min"], 3) for m, r in ms.items()} for s, ms in v.items()})
EOF
tar czf "${OUT:-/tmp}/round13b-logs.tgz" -C "$R" --exclude='*.safetensors' --exclude=checkpoints --exclude=data \
  --exclude=compile_cache --exclude=tensorboard .
for f in $(ls "$R"/ect-fp16/samples/*.png 2>/dev/null | tail -2); do cp "$f" "${OUT:-/tmp}/"; done
say "done"
