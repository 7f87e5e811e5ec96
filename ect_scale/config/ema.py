"""EMA configuration: EDM2 power-function EMAs (by sigma_rel) and an optional traditional (beta) EMA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ect_scale.config.base import check


@dataclass
class EMAConfig:
    stds: list[float] = field(default_factory=lambda: [0.010, 0.050, 0.100])  # sigma_rel of power EMAs (ECT ImageNet).
    beta: Optional[float] = 0.9999  # Traditional EMA decay per step; null = off (ECT keeps one at 0.9999).
    export_dtype: Literal["float16", "float32"] = "float16"  # Exported EMA files (EDM2 snapshots are fp16).
    # Export each EMA as a world-size-independent file every this many images (EDM2: 8Mi); 0 = at checkpoints only.
    export_nimg: int = 8_388_608

    def validate(self, path: str = "ema") -> None:
        p = path or "ema"
        for s in self.stds:
            check(
                0 < s < 12**-0.5,
                f"{p}.stds",
                f"each sigma_rel must be in (0, 0.2887) (got {s})",
                "use values like 0.010, 0.050, 0.100 (EDM2 Eq. 123 needs sigma_rel < 12^-0.5)",
            )
        if self.beta is not None:
            check(0 < self.beta < 1, f"{p}.beta", f"must be in (0, 1) (got {self.beta})", "use 0.9999 or null")
        check(self.export_nimg >= 0, f"{p}.export_nimg", "must be >= 0", "use 0 to export only at checkpoints")
