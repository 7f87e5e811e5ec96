"""The run's counters (`TrainState`): images seen, steps, skipped steps, wall and device time, and the fp16 loss
scaler's state. Saved in every checkpoint's `trainer.json`; everything else in the loop is derived from them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

from ect_scale.precision.modes import LossScaler


@dataclass
class TrainState:
    """The run's counters (checkpointed). The fp16 loss scaler's state is part of it: read from and written to
    `scaler` when the state is saved or restored, never copied per step."""

    nimg: int = 0  # Images seen (all ranks).
    steps: int = 0  # Optimizer steps attempted.
    skipped_steps: int = 0  # Steps skipped because a loss or the gradient norm was not finite.
    nonfinite_targets: int = 0  # Target-pass samples dropped for being non-finite.
    elapsed_sec: float = 0.0  # Training wall time across resumes.
    device_sec: float = 0.0  # Training wall time x ranks across resumes (device-seconds; GPU-seconds on GPUs).
    scaler: Optional[LossScaler] = field(default=None, repr=False, compare=False)  # fp16 runs only.

    def state_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "scaler"}
        out["loss_scaler"] = self.scaler.state_dict() if self.scaler is not None else {}
        return out

    def load_state_dict(self, d: dict) -> None:
        if "device_sec" not in d:  # A checkpoint from before device-seconds were counted: a lower bound.
            self.device_sec = float(d.get("elapsed_sec", 0.0))
        for k, v in d.items():
            if k == "loss_scaler":
                if v and self.scaler is not None:
                    self.scaler.load_state_dict(v)
            else:
                setattr(self, k, type(getattr(self, k))(v))
