"""Precision modes under DeepSpeed ZeRO-1/2/3 on 2 CPU ranks (gloo), each against the plain fp32 single-process
reference with the same global batch and different data per rank: fp16 compute with dynamic loss scaling (bf16 or
fp32 parameter copy), tf32 (= fp32 on a CPU), bf16. Loss scaling is checked to be invisible: the update and the
reported gradient norm do not depend on the scale, overflowing steps are skipped on every rank and halve it."""

import pytest
import torch

from tests.distributed import run_ranks
from tests.engine.common import initial_net, micro_loss, reference_run, tiny_cfg

STEPS = 3
pytestmark = pytest.mark.slow


def _worker(rank, world_size, stage, precision, extra, init_scale=None):
    from ect_scale import dist
    from ect_scale.engine import Engine

    dist.init()
    cfg = tiny_cfg(stage, precision, **extra)
    engine = Engine(cfg, initial_net(cfg))
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
    return {"state": _state(engine, rank), "losses": losses,
            "norms": norms, "applied": applied, "scales": scales, "wn_err": engine.master.max_row_norm_error(),
            "module_dtype": str(engine.module.compute_dtype)}


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


@pytest.mark.parametrize("stage,param_dtype", [(1, "auto"), (2, "auto"), (3, "auto"), (1, "fp32")])
def test_fp16_tracks_fp32_reference(stage, param_dtype):
    ref_state, ref_losses = reference_run(tiny_cfg(stage, "fp32"), world_size=2, steps=STEPS)
    # Dynamic scaling (from 2^8 here: the tiny net's fp16 weight gradients overflow at the default 2^16).
    results = run_ranks(_worker, 2, args=(stage, "fp16", {"engine.param_dtype": param_dtype}, 2.0**8), timeout=300)
    r0 = results[0]
    assert r0["module_dtype"] == "torch.float16"
    assert all(r0["applied"]) and r0["scales"] == [2.0**8] * STEPS
    assert r0["losses"] == pytest.approx(ref_losses, rel=2e-3)  # fp16 (11-bit) activations: loss within 0.2 %.
    err = _update_error(r0["state"], ref_state, tiny_cfg(stage, "fp32"))
    print(f"fp16 stage {stage} {param_dtype}: update error {err:.4f}")
    assert err < 0.1  # A wrong update (missing unscale/clip, a lost gradient) is off by ~1.
    assert all(r["wn_err"] < 1e-3 for r in results)


def test_loss_scale_is_invisible_to_the_update_and_the_norm():
    """fp16 at scale 1 and at 2^12: same gradient norm (unscaled before it is reported and clipped) and the same
    weights, with clipping active so that a missing unscale would change the update."""
    extra = {"engine.loss_scale": 1, "optim.grad_clip": 0.05}
    plain = run_ranks(_worker, 2, args=(1, "fp16", extra), timeout=300)[0]
    scaled = run_ranks(_worker, 2, args=(1, "fp16", {**extra, "engine.loss_scale": 4096}), timeout=300)[0]
    assert scaled["scales"] == [4096.0] * STEPS
    assert scaled["norms"] == pytest.approx(plain["norms"], rel=1e-3)
    assert min(plain["norms"]) > 0.05  # Clipping was active in every step.
    assert _drift(scaled["state"], plain["state"]) < 1e-4


def test_overflow_skips_on_every_rank_and_halves_the_scale():
    results = run_ranks(_worker, 2, args=(1, "fp16", {}, 2.0**80), timeout=300)
    for r in results:  # fp16 gradients overflow at 2^80: the step is skipped everywhere and the scale halves.
        assert r["applied"] == [False] * STEPS
        assert r["scales"] == [2.0**80, 2.0**79, 2.0**78]
    ref = initial_net(tiny_cfg(1, "fp32"))
    for name, v in ref.state_dict().items():  # Nothing reached the weights.
        if name in results[0]["state"]:
            torch.testing.assert_close(results[0]["state"][name], v.reshape(results[0]["state"][name].shape))


def test_tf32_mode_is_fp32_on_cpu_and_matches_reference():
    ref_state, ref_losses = reference_run(tiny_cfg(1, "fp32"), world_size=2, steps=STEPS)
    r0 = run_ranks(_worker, 2, args=(1, "tf32", {}), timeout=300)[0]
    assert r0["module_dtype"] == "torch.float32"
    assert r0["losses"] == pytest.approx(ref_losses, rel=1e-5)
    assert _drift(r0["state"], ref_state) < 1e-4


def test_calibration_bf16():
    ref_state, ref_losses = reference_run(tiny_cfg(1, "fp32"), world_size=2, steps=STEPS)
    r0 = run_ranks(_worker, 2, args=(1, "bf16", {}), timeout=300)[0]
    print("bf16 update error", _update_error(r0["state"], ref_state, tiny_cfg(1, "fp32")), r0["losses"], ref_losses)
