"""Objective configuration: ECT (consistency tuning), EDM2's diffusion loss (teacher pretraining), or distillation
from a teacher (cd, ecd; their own options are in `config.distill`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ect_scale.config.base import check


@dataclass
class ECTConfig:
    objective: Literal["ect", "diffusion", "cd", "ecd"] = (
        "ect"  # diffusion = EDM2's loss (Eq. 21, pretrains a teacher); cd / ecd distill `teacher:` (distill.*).
    )
    P_mean: float = -0.8  # ln t ~ N(P_mean, P_std^2), untruncated (ECT ImageNet-64 value).
    P_std: float = 1.6
    mapping: Literal["sigmoid", "const"] = "sigmoid"  # Delta-t mapping: n(t) = 1 + k sigmoid(-b t), or n = 1.
    q: float = 4.0  # Gap shrink factor per stage: Delta t / t = n(t) / q^(stage+1).
    k: float = 8.0  # Sigmoid mapping amplitude.
    b: float = 1.0  # Sigmoid mapping slope.
    stage_nimg: int = 3_200_000  # Images per stage; stage = nimg // stage_nimg (no mutable curriculum).
    ratio_limit: Optional[float] = None  # Cap on r/t (e.g. 0.9961 = 1 - 1/256); None = uncapped as in ECT's code.
    c: float = 0.06  # Pseudo-Huber constant: d = sqrt(||Delta||^2 + c^2) - c; 0 = plain L2 norm.
    weighting: Literal["snrpk", "inv_dt", "none"] = (
        "snrpk"  # snrpk = 1/t^2 + 1/sigma_d^2 (ImageNet); inv_dt = 1/(t-r) (CIFAR).
    )
    learned_uncertainty: bool = False  # Divide by exp(u(t)) and add u(t) using the network's log-variance head.
    sigma_data: float = 0.5  # Must equal network.sigma_data.
    t_max: float = 80.0  # Sampler start time (1-step: f(80 z, 80)).
    t_mid: list[float] = field(default_factory=lambda: [1.526])  # Intermediate times of the 2-step (n-step) sampler.

    def validate(self, path: str = "ect") -> None:
        p = path or "ect"
        check(
            self.P_std > 0, f"{p}.P_std", f"must be > 0 (got {self.P_std})", "ECT uses 1.6 (ImageNet-64) or 2.0 (CIFAR)"
        )
        check(self.q > 1, f"{p}.q", f"must be > 1 (got {self.q})", "ECT uses q=4 (ImageNet) or q=2 (CIFAR)")
        check(self.k >= 0 and self.b >= 0, f"{p}.k/{p}.b", "must be >= 0", "ECT uses k=8, b=1")
        check(
            self.stage_nimg > 0,
            f"{p}.stage_nimg",
            f"must be > 0 (got {self.stage_nimg})",
            "set the images per stage, e.g. total_nimg / 4 for ECT's 4 ImageNet stages",
        )
        check(self.c >= 0, f"{p}.c", f"must be >= 0 (got {self.c})", "use 0 for the L2 norm or 0.06 for ImageNet-64")
        if self.ratio_limit is not None:
            check(
                0 < self.ratio_limit < 1,
                f"{p}.ratio_limit",
                f"must be in (0, 1) (got {self.ratio_limit})",
                "use 0.9961 (= 1 - 1/256) or null for no cap",
            )
        check(self.t_max > 0, f"{p}.t_max", "must be > 0", "use 80")
        check(
            all(0 < t < self.t_max for t in self.t_mid),
            f"{p}.t_mid",
            f"every intermediate time must lie in (0, t_max={self.t_max}) (got {self.t_mid})",
            "ECT uses [1.526] on ImageNet-64",
        )
        check(
            sorted(self.t_mid, reverse=True) == list(self.t_mid),
            f"{p}.t_mid",
            "times must decrease",
            "list them from largest to smallest",
        )
