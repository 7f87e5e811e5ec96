"""The objective a run trains with, by `ect.objective`: ECT, EDM2's diffusion loss, or a distillation objective."""

from __future__ import annotations

from typing import Callable, Optional

from ect_scale.config.distill import DistillConfig
from ect_scale.config.ect import ECTConfig
from ect_scale.ect.distill import CDLoss, DistillNets, ECDLoss
from ect_scale.ect.loss import DiffusionLoss, ECTLoss


def build_objective(
    cfg: ECTConfig,
    reduce_any: Optional[Callable[[bool], bool]] = None,
    distill: Optional[DistillConfig] = None,
    nets: Optional[DistillNets] = None,
):
    """The loss object for `cfg.objective`; `cd` and `ecd` also take the `distill` section and the frozen networks."""
    if cfg.objective == "ect":
        return ECTLoss(cfg, reduce_any)
    if cfg.objective == "diffusion":
        return DiffusionLoss(cfg)
    if nets is None:
        raise ValueError(f"objective {cfg.objective!r} needs the teacher (DistillNets)")
    distill = distill or DistillConfig()
    if cfg.objective == "cd":
        return CDLoss(cfg, distill, nets)
    return ECDLoss(cfg, distill, nets, reduce_any)
