"""Which samples each rank generates, and generating several samplers' outputs from shared per-seed noise.

Seeds are split into ceil(N / batch_gpu) batches with `np.array_split` and rank r takes batches r::world (EDM2's
scheme, except that the number of batches does not depend on the world size). Every seed therefore shares its
batch with the same seeds whatever the number of GPUs, and since noise and labels come from per-seed generators
(`ect.SeedGenerators`), every sample -- and so the statistics, up to float64 summation order -- is identical for
any number of GPUs.

Consistency samplers that share a prefix of times share the work (`ect.samplers.consistency_samples`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from ect_scale.config.base import ConfigError
from ect_scale.ect import SeedGenerators, draw_labels, draw_latents, heun_sample
from ect_scale.ect.samplers import consistency_samples


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: ECT's consistency sampler with intermediate times `t_mid`, or EDM's deterministic sampler for
    teachers (Heun, 2nd order, or its 1st-order Euler variant)."""

    kind: Literal["consistency", "heun"] = "consistency"
    t_mid: tuple[float, ...] = ()
    t_max: float = 80.0
    num_steps: int = 32  # EDM sampler only (Heun: NFE = 2 num_steps - 1; Euler: num_steps).
    label: str = ""  # Name override (e.g. to tell t_mid values apart in a search).
    order: int = 2  # EDM sampler only: 2 = Heun, 1 = Euler.

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.kind == "consistency":
            return f"{len(self.t_mid) + 1}step"
        return f"{'heun' if self.order == 2 else 'euler'}{self.num_steps}"

    @property
    def nfe(self) -> int:
        if self.kind == "consistency":
            return len(self.t_mid) + 1
        return 2 * self.num_steps - 1 if self.order == 2 else self.num_steps

    def describe(self) -> dict:
        if self.kind == "consistency":
            return {
                "sampler": "consistency",
                "steps": len(self.t_mid) + 1,
                "t_max": self.t_max,
                "t_mid": list(self.t_mid),
                "nfe": self.nfe,
            }
        return {
            "sampler": "heun" if self.order == 2 else "euler",
            "num_steps": self.num_steps,
            "sigma_max": self.t_max,
            "nfe": self.nfe,
        }


def consistency_spec(steps: int, t_mid: Sequence[float], t_max: float = 80.0, option: str = "ect.t_mid") -> SamplerSpec:
    """The `steps`-step consistency sampler using the first steps-1 entries of `t_mid`."""
    if steps < 1:
        raise ConfigError(f"steps: must be >= 1 (got {steps}). Fix: use 1 or 2")
    if steps - 1 > len(t_mid):
        raise ConfigError(
            f"{option}: a {steps}-step sampler needs {steps - 1} intermediate times, got {list(t_mid)}. "
            f"Fix: list {steps - 1} decreasing times in {option} (ECT ImageNet-64 2-step: [1.526])"
        )
    times = tuple(float(t) for t in t_mid[: steps - 1])
    if any(not 0 < t < t_max for t in times) or list(times) != sorted(times, reverse=True):
        raise ConfigError(
            f"{option}: times must decrease within (0, t_max={t_max}), got {list(times)}. "
            "Fix: list them from largest to smallest"
        )
    return SamplerSpec(kind="consistency", t_mid=times, t_max=float(t_max))


def rank_batches(num_items: int, batch_size: int, rank: int, world_size: int) -> list[np.ndarray]:
    """Index batches of this rank: array_split into ceil(N / batch_size) batches, rank takes r::world."""
    num_batches = max(math.ceil(num_items / batch_size), 1)
    batches = np.array_split(np.arange(num_items, dtype=np.int64), num_batches)
    return [b for b in batches[rank::world_size] if len(b) > 0]


@torch.no_grad()
def sample_many(net, seeds: Sequence[int], specs: Sequence[SamplerSpec], device) -> dict[str, torch.Tensor]:
    """spec name -> float32 samples for `seeds`; noise and class labels drawn from the per-seed generators.

    Each output equals `ect.generate(net, seeds, device, ...)` for that sampler. Put `net` in eval mode first.
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"sampler names must be unique, got {names} (give SamplerSpec.label to tell them apart)")
    rng = SeedGenerators([int(s) for s in seeds], device)
    z = draw_latents(rng, net)
    labels = draw_labels(rng, net.label_dim)
    out: dict[str, torch.Tensor] = {}
    consistency = [s for s in specs if s.kind == "consistency"]
    if consistency:
        out.update(consistency_samples(net, z, labels, rng, {s.name: (s.t_max, s.t_mid) for s in consistency}))
    for s in specs:
        if s.kind == "heun":
            out[s.name] = heun_sample(net, z, labels, num_steps=s.num_steps, sigma_max=s.t_max, order=s.order)
    return {name: out[name] for name in names}
