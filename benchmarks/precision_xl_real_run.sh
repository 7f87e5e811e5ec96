#!/usr/bin/env bash
# Round 13c (one H200): EDM2-XL speed in fp16 and bf16 next to the official code's fp32/TF32 step, and a real run of
# the compiled CUDA-graph fp16 setting: an EDM2-S network on 16x16 digits with checkpoints, a stop at the half and
# a resume (the compile cache in the run folder is reused), EMA exports and in-loop FD_classifier evaluation.
# The XL benchmarks compile while the real run trains and are timed only after it has finished (TimingGate).
set -uo pipefail
source benchmarks/env.sh; round_env round13c
export TORCHINDUCTOR_COMPILE_THREADS=5
R=${OUT:-$O}; V=$O/val; mkdir -p "$V"
log() { echo "[$(date +%T)] $*" | tee -a "$R/round13c.txt"; }
G=$O/gate; mkdir -p "$G"
RO=(--sdpa --compile --channels-last --compile-mode reduce-overhead)
GATE_N=3 JOB_S=380 GATE_S=340
gated xl-fp16 29624 --preset edm2-img512-xl "${RO[@]}" --precision fp16 --steps 12 &
gated xl-bf16 29625 --preset edm2-img512-xl "${RO[@]}" --precision bf16 --steps 12 &

log "real run: data, classifier, reference"
python3 tools/make_shards.py --source sklearn-digits --out "$V/data" --resolution 16 --pixels --grayscale \
  --num-shards 16 --progress-s 600 > "$V/shards.log" 2>&1
python3 tools/train_classifier.py --data "$V/data/manifest.json" --out "$V/classifier.safetensors" --threads 4 | tail -1
python3 tools/fid_ref.py --shards "$V/data/manifest.json" --classifier "$V/classifier.safetensors" --out "$V/ref.npz" \
  --metrics fd_classifier --progress none > "$V/ref.log" 2>&1; log "reference rc=$?"
ARGS=(--config benchmarks/abc/ect.yaml --run_dir="$V/run" --data.url="$V/data/manifest.json" --engine.precision=fp16
      --engine.compile=true --engine.compile_mode=reduce-overhead --engine.channels_last=true --network.attention=sdpa
      --train.total_nimg=16384 --ect.stage_nimg=4096 --train.status_nimg=2048 --train.slice_nimg=8192
      --checkpoint.interval_nimg=8192 --ema.export_nimg=8192 --eval.interval_nimg=8192 --eval.metrics=[fd_classifier]
      --eval.classifier_path="$V/classifier.safetensors" --eval.ref_stats="$V/ref.npz" --eval.num_samples=1000
      --eval.batch_gpu=500)
for part in first resumed; do
  log "real run ($part)"
  MASTER_PORT=29640 timeout $([[ $part == first ]] && echo 220 || echo 150) python3 launchers/train.py "${ARGS[@]}" > "$V/run-$part.log" 2>&1
  log "real run ($part) rc=$?"
  grep -hE "compile:|precision|Stopping|resumed|checkpoint:|\[eval\]|error" "$V/run-$part.log" | cut -c1-230 | tee -a "$R/round13c.txt"
done
ls "$V"/run/ema "$V"/run/checkpoints | tee -a "$R/round13c.txt"
touch "$G/ready.realrun"
wait

log "official ECT step, XL fp32/TF32 (alone on the GPU)"
timeout 90 PYTHONPATH=.official python3 benchmarks/official_ect_step.py --preset xl --precision fp32 --steps 8 \
  --out "$R/official.jsonl" > "$O/official-xl-fp32.log" 2>&1; log "official xl fp32 rc=$?"
cat "$R"/bench.jsonl "$R"/official.jsonl 2>/dev/null | cut -c1-400 | tee -a "$R/round13c.txt"
cp "$V"/run/stats.jsonl "$R/realrun-stats.jsonl" 2>/dev/null
tar czf "$R/round13c-logs.tgz" -C "$O" --exclude=gate --exclude=data --exclude='*.safetensors' --exclude=checkpoints \
  --exclude=compile_cache .
log "done"
