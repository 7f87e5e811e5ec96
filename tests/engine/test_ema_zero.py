"""EMAs kept on the optimizer's fp32 partitions under ZeRO 1/2/3 (2 CPU ranks, each with different data):
* bit-identical to EMAs of the gathered full weights updated alongside (the sharded update is exact);
* equal, up to ZeRO's reduction-order noise, to a single-process reference that trains the same global batch and
  averages its weights with EDM2's power-function beta and a traditional beta."""

import pytest
import torch

from ect_scale.engine.ema import power_beta
from ect_scale.networks import forced_weight_norm_
from tests.distributed import run_ranks
from tests.engine.common import initial_net, micro_loss, tiny_cfg

pytestmark = pytest.mark.slow  # Several processes or a full run: not in the fast subset.

STEPS, STDS, BETA = 4, (0.05, 0.1), 0.9
EMA_ARGS = {"ema.stds": "[0.05,0.1]", "ema.beta": BETA}


def _profiles() -> list[tuple[str, callable]]:
    out = [(f"power-{s:.3f}", lambda nimg, b, s=s: power_beta(s, nimg, b)) for s in STDS]
    return out + [(f"beta-{BETA:g}", lambda nimg, b: BETA)]


def _worker(rank, world_size):
    from ect_scale.engine.ema import EMATracker
    from ect_scale.engine.group import init_process_group
    from ect_scale.engine.zero import Engine
    from ect_scale.runtime import dist

    init_process_group()
    results = {}
    for stage in (1, 2, 3):
        cfg = tiny_cfg(stage, "fp32", **EMA_ARGS)
        engine = Engine(initial_net(cfg), cfg.engine, cfg.optim, cfg.train)
        engine.module.train()
        ema = EMATracker(cfg.ema, engine.master)
        full = {p: _params(engine.full_state(), engine) for p in ema.profiles}
        for step in range(STEPS):
            nimg = step * cfg.train.batch_size
            for rnd in range(engine.rounds):
                loss = micro_loss(engine, engine.module, cfg, rank, step, rnd, nimg, reduce_any=dist.any_true)
                res = engine.micro_step(loss, lr=cfg.optim.lr)
            assert res.applied
            ema.update(nimg + cfg.train.batch_size, cfg.train.batch_size)
            weights = _params(engine.full_state(), engine)
            for name, beta_of in _profiles():
                beta = beta_of(nimg + cfg.train.batch_size, cfg.train.batch_size)
                for n, w in weights.items():
                    full[name][n].lerp_(w, 1.0 - beta)
        sharded = {p: _params(ema.full_state(p, engine.module, engine.param_shapes), engine) for p in ema.profiles}
        results[stage] = {"sharded": sharded, "full": full}
    return results if rank == 0 else None


def _params(state: dict, engine) -> dict:
    return {n: state[n] for n in engine.param_shapes}


def _reference(world_size: int) -> dict[str, dict[str, torch.Tensor]]:
    cfg = tiny_cfg(1, "fp32", **EMA_ARGS)
    net = initial_net(cfg)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    rounds = cfg.train.accumulation_rounds(world_size)
    emas = {name: {n: p.detach().clone() for n, p in net.named_parameters()} for name, _ in _profiles()}
    for step in range(STEPS):
        nimg = step * cfg.train.batch_size
        opt.zero_grad(set_to_none=True)
        for rank in range(world_size):
            for rnd in range(rounds):
                (micro_loss(net, net, cfg, rank, step, rnd, nimg, lambda _: True) / (rounds * world_size)).backward()
        opt.step()
        forced_weight_norm_(net)
        for name, beta_of in _profiles():
            beta = beta_of(nimg + cfg.train.batch_size, cfg.train.batch_size)
            for n, p in net.named_parameters():
                emas[name][n].lerp_(p.detach(), 1.0 - beta)  # theta_hat <- beta theta_hat + (1 - beta) theta
    return emas


def test_sharded_emas_equal_single_process_reference():
    ref = _reference(world_size=2)
    results = run_ranks(_worker, 2, timeout=300)[0]
    assert power_beta(0.05, 8, 8) == 0.0  # The first update copies the weights (EDM2: beta(t=batch) = 0).
    for stage, result in results.items():
        emas = result["sharded"]
        assert sorted(emas) == sorted(ref)
        for profile, state in emas.items():
            for name, want in ref[profile].items():
                assert torch.equal(state[name], result["full"][profile][name]), (stage, profile, name)
                err = float((state[name] - want).abs().max())
                assert err < 2e-4, f"ZeRO-{stage} {profile} {name}: max |sharded - reference| = {err:.3g}"
        # The profiles really differ from each other (the comparison is not vacuous).
        a, b = emas["power-0.050"], emas[f"beta-{BETA:g}"]
        assert max(float((a[n] - b[n]).abs().max()) for n in ref["power-0.050"]) > 1e-3
