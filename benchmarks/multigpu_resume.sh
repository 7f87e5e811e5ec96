#!/usr/bin/env bash
# Elastic resume, 4 -> 2 GPUs (NCCL), checked end to end on the real launcher path:
#   leg A: torchrun 4 processes, launchers/train.py, tiny-latent on synthetic latents, ZeRO-1 bf16 (ZERO=2: stage 2),
#          8 steps of 16 images, checkpoints at 64 and 128 images;
#   leg B: 2 processes from the same run_dir. It resumes through a DeepSpeed universal checkpoint (docs/checkpoints.md
#          section 5), then, before training, the consolidated fp32 weights and every EMA held by the 2 new ranks are
#          compared with the 4-rank checkpoint read back without DeepSpeed (tools/export.py's library path); then it
#          trains 8 more steps (checkpoints at 192 and 256).
# Verified: both legs exit 0; leg B logs "resumed from .../ckpt-000000000128 at 128 images (elastic: 4 -> 2 ranks";
# restored weights and EMAs equal the checkpoint (max |diff| <= $TOL, default 0 = bit for bit); stats.jsonl rows
# continue at 160 images after leg A's 128 and end at 256, every loss finite, no skipped steps; the checkpoints'
# trainer.json say world_size 4 (128) and 2 (256).
#
#   bash benchmarks/multigpu_resume.sh                               # GPU host: sources benchmarks/setup_gpu.sh
#   DS_ACCELERATOR=cpu bash benchmarks/multigpu_resume.sh            # CPU (gloo), also used when nvidia-smi is absent
#   NA=2 NB=1 DS_ACCELERATOR=cpu bash benchmarks/multigpu_resume.sh  # other world sizes (batch 16 must divide)
#   ZERO=2 TRAIN_EXTRA='--engine.compile=true' bash benchmarks/multigpu_resume.sh   # ZeRO-2, extra train.py overrides
#
# Logs in ${OUT:-/tmp}: resume_run.log (both legs) and resume_result.json; the run itself in a scratch folder.
# Last line: "gpu_resume: PASS ..." or "gpu_resume: FAIL ...". Exit status 0 only on PASS.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
O=${OUT:-/tmp}
mkdir -p "$O"
NA=${NA:-4}; NB=${NB:-2}    # processes in leg A and leg B
ZERO=${ZERO:-1}              # ZeRO stage (1 or 2; the universal-checkpoint path is the same)
read -r -a EXTRA <<<"${TRAIN_EXTRA:-}"  # extra overrides for both legs, e.g. TRAIN_EXTRA='--engine.compile=true'

source benchmarks/env.sh; device_env gpu_resume
if [[ $DEVICE == gpu ]]; then
  GPUS=$(nvidia-smi -L | grep -c '^GPU')
  (( GPUS >= NA )) || { echo "gpu_resume: FAIL (leg A needs $NA GPUs, nvidia-smi lists $GPUS)"; exit 1; }
fi
export REPO
TOL=${TOL:-0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ect_resume.XXXXXX")
RUN=$WORK/run
LOG=$O/resume_run.log
RESULT=$O/resume_result.json
: >"$LOG"
T0=$(date +%s)

# Everything but the world size and the duration is the same in both legs (the resume refuses changed
# Config.IMMUTABLE fields). Global batch 16 = 4 per GPU x 1 round on 4 ranks, x 2 rounds on 2 ranks.
ARGS=(--config configs/ect-img512-base.yaml "--run_dir=$RUN" --network.preset=tiny-latent
      --data.kind=synthetic --data.url= --data.synthetic_encoder=sd-vae --data.synthetic_resolution=16
      --data.synthetic_label_dim=10 --engine.zero_stage=$ZERO --engine.precision=bf16
      --train.batch_size=16 --train.batch_gpu=4 --train.status_nimg=32 --ect.stage_nimg=128
      '--ema.stds=[0.05,0.1]' --ema.export_nimg=0 --ema.export_dtype=float32
      --checkpoint.interval_nimg=64 --checkpoint.keep_last=4 "--checkpoint.staging_dir=$WORK/staging"
      --checkpoint.convert_workers=2 --logging.progress=plain --logging.tensorboard=false --logging.sample_grid=0
      "${EXTRA[@]}")

# Leg B's entry point: launchers/train.py's steps (load_config + Trainer + run) with a look at the restored state
# between Trainer() (which resumes) and run(). Full tensors are gathered from the new partitions (collective) and
# compared on rank 0 with the checkpoint consolidated from its 4 ranks' files by ect_scale.checkpoint.export.
PROBE=$WORK/resume_probe.py
cat >"$PROBE" <<'EOF'
import argparse, json, os, sys
from ect_scale.runtime import dist
from ect_scale.config import load_config
from ect_scale.train.trainer import Trainer

ap = argparse.ArgumentParser()
ap.add_argument("--config", required=True)
ap.add_argument("--probe-out", required=True)
args, overrides = ap.parse_known_args()
cfg = load_config(args.config, overrides)
trainer = Trainer(cfg)  # Resumes here: verify, convert to universal, load, re-slice the EMAs.
live = {"online": trainer.engine.full_state()}
live.update({p: trainer.ema_nets_state(p) for p in trainer.ema.profiles})
if dist.is_main():
    from ect_scale.checkpoint.export import consolidated_network, find_checkpoint
    ref = find_checkpoint(cfg.checkpoint.dir or os.path.join(cfg.run_dir, "checkpoints"))
    out = {"world_size": dist.get_world_size(), "resumed_nimg": trainer.state.nimg, "checkpoint": ref.display(),
           "compared": {}}
    for what, state in live.items():
        saved, _, meta = consolidated_network(ref, what)
        common = sorted(set(saved) & set(state))
        diff = max((float((state[k].float().cpu() - saved[k].float()).abs().max()) for k in common), default=None)
        out["compared"][what] = {"checkpoint_nimg": meta["nimg"], "tensors": len(common),
                                 "missing": sorted(set(saved) - set(state)), "max_abs_diff": diff}
    # Non-vacuity: the online weights and an EMA must differ, or equal-to-checkpoint would prove little.
    ema0 = consolidated_network(ref, trainer.ema.profiles[0])[0]
    out["online_vs_" + trainer.ema.profiles[0]] = max(float((live["online"][k].float().cpu() - ema0[k].float()).abs().max())
                                                     for k in ema0 if k in live["online"])
    with open(args.probe_out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"resume_probe: {json.dumps(out)}", flush=True)
dist.barrier()
trainer.run()
EOF

leg() {  # leg NAME NPROC ENTRY [extra args]: one torchrun invocation, output appended to $LOG.
  local name=$1 n=$2 entry=$3; shift 3
  echo "==== leg $name: $n processes ($DEVICE), $(date -u +%T)" >>"$LOG"
  echo "+ python3 -m torch.distributed.run --standalone --nproc_per_node $n $entry ${ARGS[*]} $*" >>"$LOG"
  local t=$(date +%s)
  timeout "$STEP_TIMEOUT" python3 -m torch.distributed.run --standalone --nproc_per_node "$n" \
    "$entry" "${ARGS[@]}" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "==== leg $name: exit $rc after $(( $(date +%s) - t )) s" >>"$LOG"
  echo "leg $name ($n procs): exit $rc, $(( $(date +%s) - t )) s"
  return $rc
}

echo "gpu_resume: $DEVICE, $NA -> $NB processes, run in $RUN, log $LOG"
leg A "$NA" launchers/train.py --train.total_nimg=128; RC_A=$?
ROWS_A=$(cat "$RUN/stats.jsonl" 2>/dev/null | wc -l)
RC_B=-1
if [[ $RC_A == 0 ]]; then
  leg B "$NB" "$PROBE" --train.total_nimg=256 "--probe-out=$WORK/probe.json"; RC_B=$?
fi
WALL=$(( $(date +%s) - T0 ))

# Verdict: read the logs and files the run left, print one PASS/FAIL line, write resume_result.json.
python3 - "$RUN" "$LOG" "$WORK/probe.json" "$RESULT" "$RC_A" "$RC_B" "$ROWS_A" "$NA" "$NB" "$TOL" "$WALL" "$DEVICE" "$ZERO" <<'EOF'
import json, math, os, re, sys
run, log, probe_path, result_path = sys.argv[1:5]
rc_a, rc_b, rows_a, na, nb = map(int, sys.argv[5:10])
tol, wall, device, zero = float(sys.argv[10]), int(sys.argv[11]), sys.argv[12], sys.argv[13]
fails, info = [], {"device": device, "world_sizes": [na, nb], "wall_s": wall, "exit": [rc_a, rc_b]}

def check(ok, what):
    if not ok:
        fails.append(what)
    return ok

check(rc_a == 0, f"leg A exited {rc_a}")
check(rc_b == 0, f"leg B exited {rc_b}")
text = open(log, errors="replace").read()
m = re.search(r"checkpoint: resumed from (\S+) at ([\d,]+) images \(([^;]*)", text)
info["resume_line"] = m.group(0) if m else None
if check(m is not None, "no 'checkpoint: resumed from' line in leg B"):
    check(m.group(1).endswith("ckpt-000000000128") and m.group(2) == "128", f"resumed from {m.group(1)} at {m.group(2)}")
    check(m.group(3).startswith(f"elastic: {na} -> {nb} ranks through a universal checkpoint"), f"resume path: {m.group(3)}")
probe = json.load(open(probe_path)) if os.path.exists(probe_path) else None
info["probe"] = probe
if check(probe is not None, "no restored-state comparison (resume_probe did not get that far)"):
    check(probe["resumed_nimg"] == 128 and probe["world_size"] == nb, f"probe: {probe['resumed_nimg']} images, {probe['world_size']} ranks")
    for what, c in probe["compared"].items():
        check(c["checkpoint_nimg"] == 128 and c["tensors"] > 0 and not c["missing"], f"{what}: compared {c}")
        check(c["max_abs_diff"] is not None and c["max_abs_diff"] <= tol, f"{what} differs from the checkpoint by {c['max_abs_diff']}")
    sanity = [v for k, v in probe.items() if k.startswith("online_vs_")]
    check(sanity and sanity[0] > 0, f"online weights equal the EMA ({sanity}): the comparison would be vacuous")
rows = [json.loads(l) for l in open(os.path.join(run, "stats.jsonl"))] if os.path.exists(os.path.join(run, "stats.jsonl")) else []
nimgs = [round(r["kimg"] * 1000) for r in rows]
losses = [r.get("Loss/mean", float("nan")) for r in rows]
info.update(nimg_rows=nimgs, losses=[round(x, 4) for x in losses])
check(nimgs[:rows_a] == [32, 64, 96, 128], f"leg A rows at {nimgs[:rows_a]} images (expected 32..128)")
check(nimgs[rows_a:] == [160, 192, 224, 256], f"leg B rows at {nimgs[rows_a:]} images (expected 160..256: continuing after 128)")
check(len(losses) > 0 and all(math.isfinite(x) for x in losses), f"non-finite or missing losses {losses}")
check(all(r.get("Progress/skipped_steps", 0) == 0 for r in rows), "skipped steps")
for nimg, world in ((128, na), (256, nb)):
    path = os.path.join(run, "checkpoints", f"ckpt-{nimg:012d}")
    meta = json.load(open(os.path.join(path, "trainer.json"))) if os.path.exists(os.path.join(path, "COMPLETE")) else None
    if check(meta is not None, f"no complete checkpoint {path}"):
        check(meta["world_size"] == world and int(meta["nimg"]) == nimg, f"{path}: world_size {meta['world_size']}, nimg {meta['nimg']}")
info["fails"] = fails
json.dump(info, open(result_path, "w"), indent=1)
for f in fails:
    print(f"  FAILED: {f}")
diffs = {w: c["max_abs_diff"] for w, c in (probe or {}).get("compared", {}).items()}
loss_a = losses[rows_a - 1] if 0 < rows_a <= len(losses) else float("nan")
loss_b = losses[-1] if len(losses) > rows_a else float("nan")
print(f"gpu_resume: {'PASS' if not fails else 'FAIL'} ({device}, {na} -> {nb} ranks, ZeRO-{zero}, {wall} s): resumed at "
      f"{probe['resumed_nimg'] if probe else '?'} images via {'universal checkpoint' if m and 'universal' in m.group(3) else '?'}, "
      f"restored max|diff| {diffs}, images seen {nimgs[rows_a - 1] if rows_a else '?'} -> {nimgs[-1] if nimgs else '?'}, "
      f"loss {loss_a:.4g} (A end) -> {loss_b:.4g} (B end)")
sys.exit(1 if fails else 0)
EOF
STATUS=$?
if [[ $STATUS == 0 ]]; then rm -rf "$WORK"; else echo "gpu_resume: run folder kept for inspection: $WORK"; fi
exit $STATUS
