"""Shared pieces of the engine tests: a tiny config, per-rank data, and the single-process reference."""

from __future__ import annotations

import torch

from ect_scale.config import Config, load_config
from ect_scale.ect import build_objective, step_generator
from ect_scale.networks import build_network, forced_weight_norm_


def tiny_cfg(stage: int, precision: str = "fp32", batch_size: int = 8, batch_gpu: int = 2, **extra) -> Config:
    args = [
        f"--engine.zero_stage={stage}",
        f"--engine.precision={precision}",
        "--network.preset=tiny-latent",
        "--network.dropout=0.3",
        "--network.dropout_res=8",
        f"--train.batch_size={batch_size}",
        f"--train.batch_gpu={batch_gpu}",
        "--data.kind=synthetic",
        "--optim.lr=0.01",
        "--optim.decay_nimg=0",
        "--ect.stage_nimg=16",
        "--ect.q=2",
        "--ect.P_mean=0.0",
        "--ect.P_std=1.0",
        "--logging.sample_grid=0",  # No sample grids with EMA exports (tests/launchers/test_output.py checks them).
    ]
    args += [f"--{k}={v}" for k, v in extra.items()]
    return load_config(None, args)


def initial_net(cfg, seed: int = 0):
    torch.manual_seed(seed)
    net = build_network(cfg.network)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(0.5)  # Non-zero gains so every parameter receives gradient.
            else:
                p.mul_(1.7)  # Off the unit sphere: forced normalisation has work to do.
    forced_weight_norm_(net)
    return net


def batch_for(rank: int, step: int, rnd: int, n: int, res: int = 16):
    """Distinct data per rank, step and accumulation round (a missing all-reduce would show)."""
    g = torch.Generator().manual_seed(1000 * step + 100 * rnd + rank)
    x0 = torch.randn(n, 4, res, res, generator=g) * 0.5
    labels = torch.randint(10, (n,), generator=g)
    return x0, labels


def micro_loss(net_call, module, cfg, rank: int, step: int, rnd: int, nimg: int, reduce_any=None, device="cpu"):
    x0, labels = batch_for(rank, step, rnd, cfg.train.batch_gpu, cfg.network.img_resolution)
    x0, labels = x0.to(device), labels.to(device)
    gen = step_generator(cfg.train.seed, rank, nimg, device, stream=rnd)
    masks = module.sample_dropout_masks(x0.shape[0], gen, device=device, dtype=module.compute_dtype)
    out = build_objective(cfg.ect, reduce_any)(net_call, x0, labels, nimg, gen, masks)
    return out.loss.mean()


_REFERENCE_RUNS: dict = {}


def reference_run(cfg, world_size: int, steps: int) -> tuple[dict, list[float]]:
    """Plain single-process PyTorch: same global batch, Adam, forced WN after each step. It does not depend on the
    engine section (ZeRO stage, precision), so tests of several stages share one run per session (copies)."""
    key = (repr(cfg.network), repr(cfg.optim), repr(cfg.train), repr(cfg.ect), world_size, steps)
    if key not in _REFERENCE_RUNS:
        _REFERENCE_RUNS[key] = _reference_run(cfg, world_size, steps)
    state, losses = _REFERENCE_RUNS[key]
    return {k: v.clone() for k, v in state.items()}, list(losses)


def _reference_run(cfg, world_size: int, steps: int) -> tuple[dict, list[float]]:
    net = initial_net(cfg)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    rounds = cfg.train.accumulation_rounds(world_size)
    losses = []
    for step in range(steps):
        nimg = step * cfg.train.batch_size
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for rank in range(world_size):
            for rnd in range(rounds):
                # Like ZeRO-3 ranks (which all run the target pass if any rank needs it), always call it.
                loss = micro_loss(net, net, cfg, rank, step, rnd, nimg, lambda _: True) / (rounds * world_size)
                loss.backward()
                total += float(loss.detach())
        opt.step()
        forced_weight_norm_(net)
        losses.append(total)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, losses


class ListStream:
    """A minimal in-memory training stream with the data package's interface (tests only): distinct, deterministic
    batches per (rank, index), pixel-space raw data."""

    def __init__(self, rank: int, batch_gpu: int, shape=(4, 16, 16), label_dim: int = 10, nan_at: int = -1):
        from ect_scale.data.encoders import PixelEncoder

        self.rank, self.batch_gpu, self.shape, self.label_dim = rank, batch_gpu, shape, label_dim
        self.encoder = _FloatEncoder()
        self.index = 0
        self.nan_at = nan_at
        self._pixel = PixelEncoder

    def __iter__(self):
        return self

    def __next__(self):
        g = torch.Generator().manual_seed(7919 * self.index + self.rank)
        x = torch.randn(self.batch_gpu, *self.shape, generator=g) * 0.5
        if self.index == self.nan_at:
            x[0, 0, 0, 0] = float("nan")
        y = torch.randint(self.label_dim, (self.batch_gpu,), generator=g)
        self.index += 1
        return x, y

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, d):
        self.index = d["index"]

    def counters(self):
        return {"batches": self.index}

    def close(self):
        pass


class _FloatEncoder:
    """Identity 'encoder' for float test data (already in the network's normalised space)."""

    def encode(self, raw, generator=None):
        return raw.to(torch.float32)

    def decode(self, x0):
        return (x0 * 127.5 + 128).clip(0, 255).to(torch.uint8)

    def describe(self):
        return {"kind": "test-float"}
