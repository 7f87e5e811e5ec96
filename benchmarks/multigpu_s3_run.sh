#!/usr/bin/env bash
# Training streamed from S3, end to end, on a host without a cloud: a real S3-protocol server on loopback
# (benchmarks/s3_server.py, moto), latent WebDataset shards written into s3:// by tools/make_shards.py, a 2-process
# torchrun of launchers/train.py reading them with DataLoader workers and checkpointing to s3:// as well.
#   1. s3_server.py on 127.0.0.1 (free port) with bucket ect-data; fake credentials + FSSPEC_S3_ENDPOINT_URL
#      (docs/data.md section 3), so s3fs in every process and worker talks to it.
#   2. A tiny random SD-VAE-shaped AutoencoderKL (diffusers, 4 latent channels, downsampling 2) saved locally: no
#      hub access. make_shards.py --source sklearn-digits --vae <it> --resolution 32 --limit 512 --num-shards 8
#      -> s3://ect-data/digits-latents (posterior mean/std [8,16,16] float16 = tiny-latent's 4x16x16 input).
#   3. torchrun 2 processes, tiny-latent, ZeRO-1 bf16, data.url=s3://.../manifest.json, 2 workers per rank
#      (8 shards = 2 ranks x 2 workers x 2), 24 steps of 16 images = 1.5 epochs, checkpoints to
#      s3://ect-data/runs/s3run/checkpoints every 128 images.
#   4. tools/export.py reads the last checkpoint back from s3:// (no DeepSpeed) and writes an EMA network file.
# Verified: every step exits 0; the manifest in S3 lists 8 shards / 512 samples; stats.jsonl reaches 384 images
# with finite losses, no skipped steps, and the shard loader's counters present and zero (corrupt shards,
# skipped samples); the server's access log shows GETs of all 8 shards (data came over S3) and the checkpoint's
# COMPLETE marker PUT; ckpt-000000000384 is complete in the bucket and exports.
#
#   bash benchmarks/multigpu_s3_run.sh                        # GPU host: sources benchmarks/setup_gpu.sh (wheels in .whl/)
#   DS_ACCELERATOR=cpu bash benchmarks/multigpu_s3_run.sh     # CPU (gloo), also used when nvidia-smi is absent
#   TRAIN_EXTRA='--engine.zero_stage=2' bash benchmarks/multigpu_s3_run.sh   # extra train.py overrides
#
# Logs in ${OUT:-/tmp}: s3_server.log (access log), s3_run.log (all steps), s3_result.json. Scratch elsewhere.
# Last line: "gpu_s3_run: PASS ..." or "gpu_s3_run: FAIL ...". Exit status 0 only on PASS.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-/tmp}
mkdir -p "$O"
NP=${NP:-2}                  # training processes
read -r -a EXTRA <<<"${TRAIN_EXTRA:-}"  # extra train.py overrides, e.g. TRAIN_EXTRA='--engine.compile=true'

source benchmarks/env.sh; device_env gpu_s3_run
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ect_s3.XXXXXX")
LOG=$O/s3_run.log
SLOG=$O/s3_server.log
RESULT=$O/s3_result.json
BUCKET=ect-data
DATA=s3://$BUCKET/digits-latents
CKPT=s3://$BUCKET/runs/s3run/checkpoints
: >"$LOG"
T0=$(date +%s)
fail() { echo "gpu_s3_run: FAIL ($*); log $LOG"; exit 1; }
step() {  # step NAME CMD...: run with a timeout, output appended to $LOG.
  local name=$1; shift
  echo "==== $name, $(date -u +%T)" >>"$LOG"; echo "+ $*" >>"$LOG"
  local t=$(date +%s)
  timeout "$STEP_TIMEOUT" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "==== $name: exit $rc after $(( $(date +%s) - t )) s" >>"$LOG"
  echo "$name: exit $rc, $(( $(date +%s) - t )) s"
  return $rc
}

# Preflight: everything the S3 path imports (from .whl/ on the GPU host), with the versions in the log.
python3 - >>"$LOG" 2>&1 <<'EOF' || fail "missing packages: see the first lines of $LOG (are the S3 wheels in .whl/?)"
import importlib, importlib.metadata as md
missing = []
for mod, dist in [("s3fs", "s3fs"), ("fsspec", "fsspec"), ("aiobotocore", "aiobotocore"), ("botocore", "botocore"),
                  ("moto.server", "moto"), ("flask", "flask"), ("boto3", "boto3"), ("webdataset", "webdataset"),
                  ("diffusers", "diffusers"), ("sklearn", "scikit-learn"), ("aiohttp", "aiohttp"), ("deepspeed", "deepspeed")]:
    try:
        importlib.import_module(mod)
        print(f"preflight: {dist} {md.version(dist)}")
    except Exception as e:
        missing.append(f"{dist} ({type(e).__name__}: {e})")
if missing:
    raise SystemExit("preflight: cannot import " + "; ".join(missing))
EOF

# 1. The server, in the background for this script's lifetime; the endpoint file appears once buckets exist.
python3 benchmarks/s3_server.py --bucket "$BUCKET" --endpoint-file "$WORK/endpoint" >"$SLOG" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null' EXIT  # Stop the server however we leave.
trap 'exit 143' TERM INT
for _ in $(seq 150); do [[ -s $WORK/endpoint ]] && break; kill -0 $SERVER_PID 2>/dev/null || break; sleep 0.2; done
[[ -s $WORK/endpoint ]] || fail "the S3 server did not start: see $SLOG"
ENDPOINT=$(cat "$WORK/endpoint")
unset AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
       FSSPEC_S3_ENDPOINT_URL=$ENDPOINT BOTO_CONFIG=/dev/null
echo "gpu_s3_run: $DEVICE, S3 server $ENDPOINT (pid $SERVER_PID), $NP training processes, scratch $WORK"

# 2. Latent shards in S3, from a tiny random VAE (the data path is what is tested, not the latents' quality).
step "tiny VAE" python3 - "$WORK/tiny-vae" <<'EOF' || fail "tiny VAE"
import sys, torch
from diffusers import AutoencoderKL
torch.manual_seed(0)
vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                    layers_per_block=1, norm_num_groups=4, sample_size=32)
vae.save_pretrained(sys.argv[1])
print("tiny VAE saved to", sys.argv[1])
EOF
step make_shards python3 tools/make_shards.py --source sklearn-digits --out "$DATA" --resolution 32 \
  --vae "$WORK/tiny-vae" --device cpu --limit 512 --num-shards 8 --progress-s 5 || fail "make_shards"

# 3. Train from S3 (and checkpoint to S3).
step train python3 -m torch.distributed.run --standalone --nproc_per_node "$NP" launchers/train.py \
  --config configs/ect-img512-base.yaml "--run_dir=$WORK/run" --network.preset=tiny-latent \
  "--data.url=$DATA/manifest.json" --data.num_workers=2 --data.shuffle_buffer=256 \
  --engine.zero_stage=1 --engine.precision=bf16 --train.batch_size=16 --train.batch_gpu=$((16 / NP)) \
  --train.total_nimg=384 --train.status_nimg=64 --ect.stage_nimg=128 '--ema.stds=[0.05,0.1]' \
  --ema.export_nimg=0 "--checkpoint.dir=$CKPT" --checkpoint.interval_nimg=128 \
  "--checkpoint.staging_dir=$WORK/staging" --logging.progress=plain --logging.tensorboard=false \
  --logging.sample_grid=0 "${EXTRA[@]}"
RC_TRAIN=$?

# 4. Read the checkpoint back from the bucket without DeepSpeed.
RC_EXPORT=-1
if [[ $RC_TRAIN == 0 ]]; then
  step export python3 tools/export.py "$CKPT" --what power-0.050 --out "$WORK/net-power-0.050.safetensors"
  RC_EXPORT=$?
fi
WALL=$(( $(date +%s) - T0 ))

# Verdict from the run's files, the bucket and the server's access log.
python3 - "$WORK/run" "$SLOG" "$RESULT" "$RC_TRAIN" "$RC_EXPORT" "$WALL" "$DEVICE" "$BUCKET" "$DATA" "$CKPT" "$NP" <<'EOF'
import json, math, os, re, sys
import fsspec
run, slog, result_path = sys.argv[1:4]
rc_train, rc_export, wall = map(int, sys.argv[4:7])
device, bucket, data, ckpt, nproc = sys.argv[7], sys.argv[8], sys.argv[9], sys.argv[10], int(sys.argv[11])
fails, info = [], {"device": device, "processes": nproc, "wall_s": wall, "exit": {"train": rc_train, "export": rc_export},
                   "endpoint": os.environ["FSSPEC_S3_ENDPOINT_URL"], "data": data, "checkpoints": ckpt}

def check(ok, what):
    if not ok:
        fails.append(what)
    return ok

check(rc_train == 0, f"training exited {rc_train}")
check(rc_export == 0, f"tools/export.py from {ckpt} exited {rc_export}")
fs = fsspec.filesystem("s3")
fs.invalidate_cache()
strip = lambda u: u.removeprefix("s3://")
manifest = json.loads(fs.cat(f"{strip(data)}/manifest.json"))
info["manifest"] = {"shards": len(manifest["shards"]), "num_samples": manifest["num_samples"], "raw": manifest["raw"],
                    "encoder": manifest["encoder"]["kind"]}
check(len(manifest["shards"]) == 8 and manifest["num_samples"] == 512, f"manifest: {info['manifest']}")
check(manifest["raw"]["shape"] == [8, 16, 16], f"raw shape {manifest['raw']['shape']}")
# Training: rows, losses, the shard loader's counters (present only for data.kind=shards).
path = os.path.join(run, "stats.jsonl")
rows = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
nimgs = [round(r["kimg"] * 1000) for r in rows]
losses = [r.get("Loss/mean", float("nan")) for r in rows]
counters = {k: v for k, v in (rows[-1] if rows else {}).items() if k.startswith("Data/")}
info.update(nimg_rows=nimgs, losses=[round(x, 4) for x in losses], loader_counters=counters)
check(nimgs == [64, 128, 192, 256, 320, 384], f"stats.jsonl rows at {nimgs} images (expected 64..384)")
check(len(losses) > 0 and all(math.isfinite(x) for x in losses), f"non-finite or missing losses {losses}")
check(all(r.get("Progress/skipped_steps", 0) == 0 for r in rows), "skipped steps")
check("Data/corrupt_shards_skipped" in counters, "no Data/* loader counters in stats.jsonl (not the shard stream?)")
check(counters.get("Data/corrupt_shards_skipped", 1) == 0 and counters.get("Data/samples_skipped", 1) == 0,
      f"loader skipped data: {counters}")
# The server saw the shards being read (GET, also ranged) and the checkpoint being written.
access = open(slog, errors="replace").read()
prefix = "/" + strip(data) + "/"
gets = re.findall(r'"GET ' + re.escape(prefix) + r'(shard-\d+\.tar)[^"]* HTTP/1\.\d" 20[06]', access)
info["shard_gets"] = {"requests": len(gets), "distinct_shards": len(set(gets))}
check(len(set(gets)) == 8, f"the server served {len(set(gets))} of 8 shards ({len(gets)} GETs)")
puts = re.findall(r'"PUT /' + re.escape(strip(ckpt)) + r'/(ckpt-\d+)/COMPLETE HTTP', access)
info["complete_markers_put"] = puts
check("ckpt-000000000384" in puts, f"no COMPLETE marker PUT for ckpt-000000000384 (saw {puts})")
listing = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(strip(ckpt))) if fs.exists(strip(ckpt)) else []
info["bucket_checkpoints"] = listing
check(fs.exists(f"{strip(ckpt)}/ckpt-000000000384/COMPLETE"), f"no complete ckpt-000000000384 in {ckpt}: {listing}")
info["fails"] = fails
json.dump(info, open(result_path, "w"), indent=1)
for f in fails:
    print(f"  FAILED: {f}")
print(f"gpu_s3_run: {'PASS' if not fails else 'FAIL'} ({device}, {nproc} ranks, {wall} s): {nimgs[-1] if nimgs else 0} images "
      f"from {data} ({info['manifest']['num_samples']} samples in {info['manifest']['shards']} shards; server served "
      f"{len(set(gets))} shards in {len(gets)} GETs), loss {losses[0] if losses else float('nan'):.4g} -> "
      f"{losses[-1] if losses else float('nan'):.4g}, loader counters {counters}, checkpoints in bucket {listing}")
sys.exit(1 if fails else 0)
EOF
STATUS=$?
if [[ $STATUS == 0 ]]; then rm -rf "$WORK"; else echo "gpu_s3_run: scratch kept for inspection: $WORK"; fi
exit $STATUS
