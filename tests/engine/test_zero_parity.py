"""ZeRO-1/2/3 on 2 CPU ranks (gloo) reach the same weights as a single-process reference with the same global
batch, with forced weight normalisation applied to the fp32 master weights. Each rank sees different data."""

import pytest
import torch

from tests.distributed import run_cases
from tests.engine.common import initial_net, micro_loss, reference_run, tiny_cfg

pytestmark = pytest.mark.slow  # Several processes or a full run: not in the fast subset.

STEPS = 3


def _worker(rank, world_size, stage, precision):
    from ect_scale.engine.group import init_process_group
    from ect_scale.engine.zero import Engine
    from ect_scale.runtime import dist

    init_process_group()
    cfg = tiny_cfg(stage, precision)
    engine = Engine(initial_net(cfg), cfg.engine, cfg.optim, cfg.train)
    engine.module.train()
    losses = []
    for step in range(STEPS):
        nimg = step * cfg.train.batch_size
        local = 0.0
        for rnd in range(engine.rounds):
            loss = micro_loss(engine, engine.module, cfg, rank, step, rnd, nimg, reduce_any=dist.any_true)
            local += float(loss.detach()) / engine.rounds
            res = engine.micro_step(loss, lr=cfg.optim.lr)
        assert res is not None and res.applied
        t = torch.tensor([local])
        dist.all_reduce_(t)
        losses.append(float(t) / world_size)
    state = engine.full_state()
    err = engine.master.max_row_norm_error()
    return {"state": state if rank == 0 else None, "losses": losses, "wn_err": err}


@pytest.fixture(scope="module")
def runs():
    """Every stage and precision in one pair of processes (an engine per case)."""
    return run_cases(_worker, {(stage, p): (stage, p) for p in ("fp32", "bf16") for stage in (1, 2, 3)})


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_matches_reference_fp32(stage, runs):
    cfg = tiny_cfg(stage, "fp32")
    ref_state, ref_losses = reference_run(cfg, world_size=2, steps=STEPS)
    results = runs[(stage, "fp32")]
    assert results[0]["losses"] == pytest.approx(ref_losses, rel=1e-5)
    # Adam amplifies fp32 reduction-order noise for near-zero gradients (steps are ~lr in size); a missing
    # all-reduce would show as differences ~lr = 1e-2, far above this tolerance.
    for name, ref in ref_state.items():
        torch.testing.assert_close(
            results[0]["state"][name], ref, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )
    assert all(r["wn_err"] < 1e-3 for r in results)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_bf16_master_weights_stay_normalised(stage, runs):
    ref_state, ref_losses = reference_run(tiny_cfg(stage, "fp32"), world_size=2, steps=STEPS)
    results = runs[(stage, "bf16")]
    for r in results:
        assert r["wn_err"] < 1e-3  # Forced WN holds on the fp32 masters under bf16 ZeRO.
    # bf16 compute tracks the fp32 reference loosely.
    assert results[0]["losses"] == pytest.approx(ref_losses, rel=0.05)
    drift = max(float((results[0]["state"][n] - v).abs().max()) for n, v in ref_state.items())
    assert drift < 0.05
