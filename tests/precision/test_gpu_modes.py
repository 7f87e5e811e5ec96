"""On a GPU: every precision mode compiled with CUDA graphs (the recipes' setting: compile with reduce-overhead,
channels-last, SDPA) against plain fp32 eager with TF32 off, through the real engine (one process, NCCL).
The update after a few Adam steps and the loss must track fp32, with the expected ordering of the modes' errors
(fp16 with a fixed loss scale that does not overflow, so that every step applies). The dynamic loss scale, compiled:
it starts at 2^16, skips the steps that overflow, halves, and then trains. Skipped without CUDA."""

import pytest
import torch

from tests.engine.common import initial_net, micro_loss, tiny_cfg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
STEPS = 4
FAST = {
    "engine.compile": "true",
    "engine.compile_mode": "reduce-overhead",
    "engine.channels_last": "true",
    "network.attention": "sdpa",
}


def _engine(mode: str, fast: bool, tmp_path, **extra):
    from ect_scale.engine.group import init_process_group
    from ect_scale.engine.zero import Engine

    init_process_group()
    extra = dict(FAST if fast else {}, run_dir=str(tmp_path / mode), **extra)
    cfg = tiny_cfg(1, mode, batch_size=8, batch_gpu=8, **extra)
    engine = Engine(initial_net(cfg).cuda(), cfg.engine, cfg.optim, cfg.train)
    engine.module.train()
    return engine, cfg


def _step(engine, cfg, step: int, fast: bool):
    if fast:
        torch.compiler.cudagraph_mark_step_begin()
    loss = micro_loss(engine, engine.module, cfg, 0, step, 0, step * 8, device="cuda")
    return float(loss.detach()), engine.micro_step(loss, lr=cfg.optim.lr)


def _run(mode: str, fast: bool, tmp_path):
    engine, cfg = _engine(mode, fast, tmp_path, **({"engine.loss_scale": 256} if mode == "fp16" else {}))
    losses = []
    for step in range(STEPS):
        loss, res = _step(engine, cfg, step, fast)
        losses.append(loss)
        assert res.applied, f"{mode}: step {step} skipped"
    return engine.full_state(), losses


def _update_error(state, ref, init) -> float:
    num = sum(float(((state[n] - init[n]) - (ref[n] - init[n])).square().sum()) for n in init)
    den = sum(float((ref[n] - init[n]).square().sum()) for n in init)
    return (num / den) ** 0.5


@pytest.mark.slow  # 114 s on an H100 (inductor compiles of every mode).
def test_compiled_modes_track_fp32(tmp_path):
    init_cfg = tiny_cfg(1, "fp32")
    ref, ref_losses = _run("fp32", False, tmp_path)
    init = {n: v.reshape(ref[n].shape) for n, v in initial_net(init_cfg).state_dict().items() if n in ref}
    errors = {}
    for mode in ("tf32", "fp16", "bf16"):
        state, losses = _run(mode, True, tmp_path)
        errors[mode] = _update_error(state, ref, init)
        assert losses[0] == pytest.approx(ref_losses[0], rel={"tf32": 2e-3, "fp16": 5e-3, "bf16": 3e-2}[mode])
    print("update error vs fp32:", errors)
    assert errors["tf32"] < 0.1 and errors["fp16"] < 0.1 and errors["bf16"] < 0.3
    assert errors["fp16"] < errors["bf16"]  # 11 significand bits beat 8.


def test_compiled_fp16_dynamic_loss_scale_recovers_from_overflow(tmp_path):
    engine, cfg = _engine("fp16", True, tmp_path)
    assert engine.scaler.scale == 2.0**16
    applied = [_step(engine, cfg, step, True)[1].applied for step in range(24)]
    print("applied:", applied, "scale:", engine.scaler.scale)
    first = applied.index(True)  # Raises if no step ever applied.
    assert engine.scaler.scale == 2.0 ** (16 - first)  # Halved once per skipped step, kept after that.
    assert all(applied[first:]), applied
    state = engine.full_state()
    assert all(torch.isfinite(v).all() for v in state.values())
