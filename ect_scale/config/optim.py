"""Optimizer and learning-rate configuration (EDM2/ECT: Adam, betas (0.9, 0.99), inverse-sqrt decay in images)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ect_scale.config.base import check


@dataclass
class OptimConfig:
    lr: float = 1e-3  # Reference learning rate alpha_ref (ECT ImageNet-64 S: 1e-3).
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # Adam betas (EDM2/ECT).
    eps: float = 1e-8  # Adam epsilon (ECT passes 1e-8).
    weight_decay: float = 0.0  # EDM2/ECT use none (forced weight normalisation pins weight norms).
    decay_nimg: int = 256_000  # Inverse-sqrt decay starts after this many images; 0 = constant LR.
    rampup_nimg: int = 0  # Linear warm-up length in images (EDM2 pretraining: 10M; ECT: 0).
    grad_clip: float = 0.0  # Global gradient-norm clip; 0 = off (EDM2/ECT do not clip).

    def validate(self, path: str = "optim") -> None:
        p = path or "optim"
        check(self.lr > 0, f"{p}.lr", f"must be > 0 (got {self.lr})", "ECT uses 1e-3 (S) to 7e-4 (XL)")
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"{p}.betas",
            f"must be two values in [0, 1) (got {self.betas})",
            "use [0.9, 0.99]",
        )
        check(self.eps > 0, f"{p}.eps", "must be > 0", "use 1e-8")
        check(
            self.decay_nimg >= 0 and self.rampup_nimg >= 0,
            f"{p}.decay_nimg/rampup_nimg",
            "must be >= 0",
            "use 0 to disable",
        )
        check(self.grad_clip >= 0, f"{p}.grad_clip", "must be >= 0", "use 0 to disable clipping")
