"""Distillation configuration: consistency distillation (`ect.objective: cd`, Song et al. 2023) and ECT's schedule
with a teacher ODE step (`ect.objective: ecd`). The teacher and the optional guide are network files named at the
top of the recipe (`teacher:`, `guide:`); this section holds how they are used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ect_scale.config.base import check

DISTANCES = ("pseudo_huber", "l2_squared", "lpips")


@dataclass
class DistillConfig:
    solver: Literal["heun", "euler"] = "heun"  # Teacher ODE step t -> r: Heun (2 teacher calls) or Euler (1).
    guidance: float = 1.0  # w in D = D_guide + w (D_teacher - D_guide); 1 = the teacher alone (no `guide:`).
    levels: int = 18  # CD: N noise levels discretising [t_min, ect.t_max] (Song et al. 2023: 18 CIFAR-10, 40 ImageNet).
    t_min: float = 0.002  # CD: epsilon, the smallest level (where f(x, eps) ~ x).
    rho: float = 7.0  # CD: Karras et al.'s schedule exponent.
    target_ema: float = 0.95  # CD: mu, the target network's EMA rate theta- <- mu theta- + (1 - mu) theta.
    distance: Literal["pseudo_huber", "l2_squared", "lpips"] = (
        "pseudo_huber"  # d: sqrt(||D||^2 + c^2) - c with ect.c (ECT's); l2_squared = ||D||^2 (CD's L2).
    )
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = (
        "auto"  # Teacher/guide/CD-target weights on the GPU; auto = the run's parameter copy, 16-bit under ZeRO-3.
    )

    def validate(self, path: str = "distill") -> None:
        p = path or "distill"
        check(self.guidance > 0, f"{p}.guidance", f"must be > 0 (got {self.guidance})", "use 1 (no guidance) or e.g. 2")
        check(
            self.levels >= 2, f"{p}.levels", f"must be >= 2 (got {self.levels})", "CD uses 18 (CIFAR-10), 40 (ImageNet)"
        )
        check(self.t_min > 0, f"{p}.t_min", f"must be > 0 (got {self.t_min})", "CD uses 0.002")
        check(self.rho > 0, f"{p}.rho", f"must be > 0 (got {self.rho})", "CD uses 7")
        check(
            0 <= self.target_ema < 1,
            f"{p}.target_ema",
            f"must be in [0, 1) (got {self.target_ema})",
            "CD uses 0.95; 0 makes the target the online network (stop-gradient)",
        )
        check(
            self.distance != "lpips",
            f"{p}.distance",
            "lpips needs VGG/AlexNet weights this project cannot download, so it is not built in",
            "use pseudo_huber (iCT's replacement for LPIPS) or l2_squared; a feature distance can be registered with "
            "ect_scale.ect.distill.register_distance (docs/distillation.md)",
        )
