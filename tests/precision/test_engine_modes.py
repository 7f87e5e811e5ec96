"""Precision modes under DeepSpeed ZeRO-1/2/3 on 2 CPU ranks (gloo), each against the plain fp32 single-process
reference with the same global batch and different data per rank: fp16 compute with dynamic loss scaling (bf16 or
fp32 parameter copy), tf32 (= fp32 on a CPU), bf16. Loss scaling is checked to be invisible: the update and the
reported gradient norm do not depend on the scale, overflowing steps are skipped on every rank and halve it."""

import pytest
import torch

from tests.distributed import run_cases, run_ranks
from tests.engine.common import initial_net, micro_loss, reference_run, tiny_cfg

STEPS = 3
# CPUs have no fast fp16 convolution backward (about 20x slower than bf16 here): the fp16 cases run the tiny net at
# 8 px (still both levels, attention at the first), which takes a quarter of the time of 16 px.
PX8 = {"network.img_resolution": 8}
pytestmark = pytest.mark.slow


def _worker(rank, world_size, stage, precision, extra, init_scale=None):
    from ect_scale.engine.group import init_process_group
    from ect_scale.engine.zero import Engine
    from ect_scale.runtime import dist

    init_process_group()
    cfg = tiny_cfg(stage, precision, **PX8, **extra)
    engine = Engine(initial_net(cfg), cfg.engine, cfg.optim, cfg.train)
    if init_scale is not None:
        engine.scaler.scale = init_scale
    engine.module.train()
    losses, norms, applied, scales = [], [], [], []
    for step in range(STEPS):
        nimg = step * cfg.train.batch_size
        local = 0.0
        scales.append(engine.loss_scale)
        for rnd in range(engine.rounds):
            loss = micro_loss(engine, engine.module, cfg, rank, step, rnd, nimg, reduce_any=dist.any_true)
            local += float(loss.detach()) / engine.rounds
            res = engine.micro_step(loss, lr=cfg.optim.lr)
        applied.append(res.applied)
        norms.append(float(res.grad_norm) if res.grad_norm is not None else float("nan"))
        t = torch.tensor([local])
        dist.all_reduce_(t)
        losses.append(float(t) / world_size)
    return {
        "state": _state(engine, rank),
        "losses": losses,
        "norms": norms,
        "applied": applied,
        "scales": scales,
        "wn_err": engine.master.max_row_norm_error(),
        "module_dtype": str(engine.module.compute_dtype),
    }


def _state(engine, rank):
    state = engine.full_state()  # Collective: every rank gathers.
    return state if rank == 0 else None


def _drift(state, ref):
    return max(float((state[n] - v).abs().max()) for n, v in ref.items())


def _update_error(state, ref, cfg) -> float:
    """||update - reference update|| / ||reference update|| over all parameters (updates from the common init).
    Max-abs differences mislead here: Adam's first steps are sign-like, so a near-zero gradient element moves by
    +-lr either way."""
    init = {n: v.reshape(ref[n].shape) for n, v in initial_net(cfg).state_dict().items() if n in ref}
    num = sum(float(((state[n] - init[n]) - (ref[n] - init[n])).square().sum()) for n in init)
    den = sum(float((ref[n] - init[n]).square().sum()) for n in init)
    return (num / den) ** 0.5


FP16 = [(1, "auto"), (2, "auto"), (3, "auto"), (1, "fp32")]  # (ZeRO stage, parameter copy)
SCALE = {"engine.loss_scale": 256, "optim.grad_clip": 0.05}  # A fixed loss scale, clipping active.


@pytest.fixture(scope="module")
def runs():
    """Every engine case of this file in one pair of processes (an engine per case)."""
    cases = {
        # Dynamic scaling (from 2^8 here: the tiny net's fp16 weight gradients overflow at the default 2^16).
        **{("fp16", s, d): (s, "fp16", {"engine.param_dtype": d}, 2.0**8) for s, d in FP16},
        "scale-256": (1, "fp16", SCALE),
        "scale-4096": (1, "fp16", {**SCALE, "engine.loss_scale": 4096}),
        "overflow": (1, "fp16", {}, 2.0**80),
        "tf32": (1, "tf32", {}),
    }
    return run_cases(_worker, cases)


@pytest.mark.parametrize("stage,param_dtype", FP16)
def test_fp16_tracks_fp32_reference(stage, param_dtype, runs):
    ref_state, ref_losses = reference_run(tiny_cfg(stage, "fp32", **PX8), world_size=2, steps=STEPS)
    results = runs[("fp16", stage, param_dtype)]
    r0 = results[0]
    assert r0["module_dtype"] == "torch.float16"
    assert all(r0["applied"]) and r0["scales"] == [2.0**8] * STEPS
    assert r0["losses"] == pytest.approx(ref_losses, rel=2e-3)  # fp16 (11-bit) activations: loss within 0.2 %.
    err = _update_error(r0["state"], ref_state, tiny_cfg(stage, "fp32", **PX8))
    print(f"fp16 stage {stage} {param_dtype}: update error {err:.4f}")
    assert err < 0.1  # A wrong update (missing unscale/clip, a lost gradient) is off by ~1.
    assert all(r["wn_err"] < 1e-3 for r in results)


def test_loss_scale_is_invisible_to_the_update_and_the_norm(runs):
    """fp16 at fixed scales 2^8 and 2^12: the same gradient norm (unscaled before it is reported and clipped) and
    the same weights, with clipping active, so that a missing unscale (a factor of 16 between the runs) would change
    the reported norm and the clipping. (Adam is almost invariant to a constant gradient factor, so the norm is
    what exposes a wrong scale.)"""
    plain, scaled = runs["scale-256"][0], runs["scale-4096"][0]
    assert plain["scales"] == [256.0] * STEPS and scaled["scales"] == [4096.0] * STEPS
    # fp16 rounding differs between the scales (small gradients fall into fp16's subnormals at 2^8), and Adam
    # carries it into the next step: ~1e-3. A missing or doubled unscale would be off by 16x.
    assert scaled["norms"] == pytest.approx(plain["norms"], rel=1e-2)
    assert min(plain["norms"]) > 0.05  # Clipping was active in every step.
    assert _update_error(scaled["state"], plain["state"], tiny_cfg(1, "fp32", **PX8)) < 0.02


def test_overflow_skips_on_every_rank_and_halves_the_scale(runs):
    results = runs["overflow"]
    for r in results:  # fp16 gradients overflow at 2^80: the step is skipped everywhere and the scale halves.
        assert r["applied"] == [False] * STEPS
        assert r["scales"] == [2.0**80, 2.0**79, 2.0**78]
    ref = initial_net(tiny_cfg(1, "fp32", **PX8))
    for name, v in ref.state_dict().items():  # Nothing reached the weights.
        if name in results[0]["state"]:
            torch.testing.assert_close(results[0]["state"][name], v.reshape(results[0]["state"][name].shape))


def test_tf32_mode_is_fp32_on_cpu_and_matches_reference(runs):
    ref_state, ref_losses = reference_run(tiny_cfg(1, "fp32", **PX8), world_size=2, steps=STEPS)
    r0 = runs["tf32"][0]
    assert r0["module_dtype"] == "torch.float32"
    assert r0["losses"] == pytest.approx(ref_losses, rel=1e-5)
    assert _update_error(r0["state"], ref_state, tiny_cfg(1, "fp32", **PX8)) < 1e-3  # fp32 reduction-order noise only.


def _schedule_run(rank, world_size, run_dir, slice_nimg):
    import io
    from contextlib import redirect_stdout

    from ect_scale.train.trainer import Trainer
    from tests.engine.common import ListStream

    extra = {
        "checkpoint.interval_nimg": 16,
        "train.total_nimg": 32,
        "train.status_nimg": 8,
        "ema.export_nimg": 0,
        "logging.progress": "plain",
        "ect.stage_nimg": 16,
        "engine.precision_schedule": "[1:fp16]",
        "train.slice_nimg": slice_nimg,
        "engine.loss_scale_window_nimg": 8,
        "run_dir": run_dir,
    }
    cfg = tiny_cfg(1, "bf16", batch_size=8, batch_gpu=4, **PX8, **extra)
    out = io.StringIO()
    with redirect_stdout(out):
        trainer = Trainer(cfg, stream=ListStream(rank, 4, shape=(4, 8, 8)))
        if trainer.state.nimg == 0:
            trainer.engine.scaler.scale = 2.0**6  # The tiny net overflows at 2^16; start where it does not.
        start = trainer.engine.scaler.state_dict()
        state = trainer.run()
    return {
        "log": out.getvalue(),
        "mode": trainer.engine.mode,
        "scaler": trainer.engine.scaler.state_dict(),
        "start": start,
        "state": state.state_dict(),
    }


def test_schedule_switches_logs_and_resumes(tmp_path):
    """bf16 for stage 0, fp16 from stage 1 (at 16 images): the switch is logged, the stage checks run, and a run
    stopped after the switch resumes in fp16 with its loss-scaler state."""
    first = run_ranks(_schedule_run, 2, args=(str(tmp_path), 24), timeout=300)[0]
    assert "precision: bf16 -> fp16 at 16 images (stage 1)" in first["log"]
    assert "precision check, stage 0 (bf16)" in first["log"] and "precision check, stage 1 (fp16)" in first["log"]
    assert first["mode"] == "fp16" and first["state"]["nimg"] == 24
    assert first["state"]["loss_scaler"] == first["scaler"] and first["scaler"]["scale"] > 2.0**6  # It grew.
    resumed = run_ranks(_schedule_run, 2, args=(str(tmp_path), 0), timeout=300)[0]
    assert "resumed" in resumed["log"] and resumed["state"]["nimg"] == 32 and resumed["mode"] == "fp16"
    assert resumed["start"] == first["scaler"]  # The loss scaler came back from the checkpoint.
    assert "precision: bf16 -> fp16 at 24 images (stage 1)" in resumed["log"]  # The schedule, applied on resume.
