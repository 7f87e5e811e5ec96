"""Explicit random number generation: per-training-step generators and per-sample (per-seed) generators.

Training draws t, noise, dropout masks and latent samples from a generator seeded by (seed, rank, nimg), as
EDM2 reseeds each step: a resumed run draws exactly what an uninterrupted run would have drawn.
Sampling draws each sample's noise and label from its own seed's generator, so a sample depends only on its
seed, never on the batch it shares or the number of ranks.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts, stable across processes and Python versions."""
    digest = hashlib.sha256(b"|".join(str(int(p)).encode() for p in parts)).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def step_generator(seed: int, rank: int, nimg: int, device, stream: int = 0) -> torch.Generator:
    """Generator for one rank's micro-step at `nimg` images seen. `stream` separates independent uses."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, rank, nimg, stream))
    return gen


class SeedGenerators:
    """One generator per sample seed (EDM2's StackedRandomGenerator idea, written for this project)."""

    def __init__(self, seeds: Sequence[int], device):
        self.device = torch.device(device)
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(int(s) % (1 << 63))
            self.generators.append(g)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape_per_sample: Sequence[int], dtype=torch.float32) -> torch.Tensor:
        return torch.stack(
            [
                torch.randn(tuple(shape_per_sample), generator=g, device=self.device, dtype=dtype)
                for g in self.generators
            ]
        )

    def randint(self, high: int) -> torch.Tensor:
        return torch.stack([torch.randint(high, (), generator=g, device=self.device) for g in self.generators])
