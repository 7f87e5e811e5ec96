"""Schedules as pure functions of images seen (`nimg`): ECT's t distribution and t -> r mapping, and the LR.

Nothing here holds state, so a resumed run, or a run with another GPU count or micro-batch, gets the same
stage, r and learning rate at the same `nimg`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ect_scale.config.ect import ECTConfig


def sample_t(n: int, cfg: ECTConfig, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """ln t ~ N(P_mean, P_std^2), untruncated (ECT `loss.py`; EDM's lognormal)."""
    z = torch.randn(n, generator=generator, device=device)
    return (z * cfg.P_std + cfg.P_mean).exp()


def stage_at(nimg: int, cfg: ECTConfig) -> int:
    """ECT stage index s = floor(nimg / stage_nimg) (the code's `cur_tick // double_ticks`, in images)."""
    return int(nimg) // cfg.stage_nimg


def _gap(nimg: int, cfg: ECTConfig) -> float:
    """1 / q^(s+1) as a float (underflows gracefully to 0 for very late stages)."""
    return float(cfg.q) ** -(stage_at(nimg, cfg) + 1)


def n_of_t(t: torch.Tensor, cfg: ECTConfig) -> torch.Tensor:
    """Mapping n(t) = 1 + k sigmoid(-b t) ('sigmoid'), or 1 ('const') (ECT Sec. 3; locuslab/ect training/loss.py)."""
    if cfg.mapping == "const":
        return torch.ones_like(t)
    return 1 + cfg.k * torch.sigmoid(-cfg.b * t)


def ratio_at(t: torch.Tensor, nimg: int, cfg: ECTConfig) -> torch.Tensor:
    """r/t = 1 - n(t) / q^(s+1); note the exponent s+1 of the official code (locuslab/ect#9), capped by ratio_limit."""
    ratio = 1 - n_of_t(t, cfg) * _gap(nimg, cfg)
    if cfg.ratio_limit is not None:
        ratio = ratio.clamp(max=cfg.ratio_limit)
    return ratio


def t_to_r(t: torch.Tensor, nimg: int, cfg: ECTConfig) -> torch.Tensor:
    """r = max(t * ratio(t), 0): r = 0 means the target is the clean sample x0 (pure denoising)."""
    return (t * ratio_at(t, nimg, cfg)).clamp(min=0)


def nominal_ratio(nimg: int, cfg: ECTConfig) -> float:
    """Large-t ratio 1 - 1/q^(s+1) (n -> 1), for logging the stage's Delta t / t."""
    ratio = 1 - _gap(nimg, cfg)
    return min(ratio, cfg.ratio_limit) if cfg.ratio_limit is not None else ratio


def learning_rate(nimg: int, ref_lr: float, decay_nimg: int, rampup_nimg: int = 0) -> float:
    """EDM2's inverse-square-root decay (EDM2 Eq. 67; NVlabs/edm2
    training/training_loop.py, learning_rate_schedule), with time measured in images.

    lr = ref_lr / sqrt(max(nimg / decay_nimg, 1)), times a linear warm-up over rampup_nimg images.
    decay_nimg = 0 disables the decay. (ECT ImageNet: decay after 2000 batches -> decay_nimg = 2000 * batch.)
    """
    lr = ref_lr
    if decay_nimg > 0:
        lr /= math.sqrt(max(nimg / decay_nimg, 1.0))
    if rampup_nimg > 0:
        lr *= min(nimg / rampup_nimg, 1.0)
    return lr
