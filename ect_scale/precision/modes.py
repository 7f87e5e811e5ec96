"""Training precision: the compute precision of the U-Net main path, its schedule over ECT stages, and fp16 loss
scaling. Master weights and Adam are fp32 in every mode; see docs/precision.md for the measurements behind the
recipes' choice.

Modes (what the U-Net's main path computes in; the embedding path, the preconditioning and the loss are fp32):
  bf16   bfloat16 activations (8-bit significand): fastest, but its rounding noise exceeds ECT's last-stage
         signal f(x_t) - f(x_r) (docs/precision.md).
  fp16   float16 activations (11-bit significand), as EDM2 trains (EDM2 App. D.2), with dynamic loss scaling so
         that small backward activations do not underflow (`LossScaler`).
  tf32   float32 activations with TF32 tensor-core matmuls/convolutions: the official ECT ImageNet recipe
         (`run_imgnet_ecm.sh --fp16=0`, TF32 forced on in imgnet ct_training_loop.py).
  fp32   float32 with TF32 off: the reference every other mode is measured against.
TF32 is off in every mode but `tf32`, so the fp32 embedding path stays exact (EDM2 sets allow_tf32=False).

The schedule is a pure function of images seen: `engine.precision` from stage 0, switched at the ECT stage
boundaries listed in `engine.precision_schedule` ("STAGE:MODE").
"""

from __future__ import annotations

import math

import torch

from ect_scale.config.engine import PRECISION_MODES as MODES
from ect_scale.ect.schedules import stage_at

__all__ = ["MODES", "COMPUTE_DTYPE", "mode_at", "mode_at_stage", "set_tf32", "precision_mode", "LossScaler"]
COMPUTE_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}
COMPUTE_DTYPE_NAME = {"bf16": "bfloat16", "fp16": "float16", "tf32": "float32", "fp32": "float32"}


def mode_at_stage(stage: int, base: str, schedule: list[tuple[int, str]]) -> str:
    """The mode in effect at ECT stage `stage`: `base`, switched by each (first stage, mode) reached."""
    mode = base
    for start, m in schedule:
        if stage >= start:
            mode = m
    return mode


def mode_at(nimg: int, engine_cfg, ect_cfg) -> str:
    """The precision mode in effect at `nimg` images for a full `Config` (a pure function of images seen)."""
    return mode_at_stage(stage_at(nimg, ect_cfg), engine_cfg.precision, engine_cfg.schedule())


def set_tf32(mode: str) -> None:
    """TF32 on for `tf32`, off otherwise (process-wide switches of matmuls and cuDNN convolutions)."""
    on = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


class precision_mode:
    """Context manager: run `net` (a `Precond`) in `mode` (compute dtype + TF32), restoring both afterwards."""

    def __init__(self, net, mode: str):
        self.net, self.mode = net, mode

    def __enter__(self):
        self.saved = (self.net.compute_dtype, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        self.net.compute_dtype = COMPUTE_DTYPE[self.mode]
        set_tf32(self.mode)
        return self.net

    def __exit__(self, *exc):
        self.net.compute_dtype, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
        return False


class LossScaler:
    """Dynamic loss scaling for fp16 compute (Micikevicius et al. 2018; the policy of torch's GradScaler).

    The loss is multiplied by `scale` before backward so that small activation gradients stay above fp16's
    underflow threshold (6e-8); gradients are divided by it again before clipping and Adam, so the update is
    unchanged. A step whose gradient (or loss) is not finite is skipped on every rank (the global gradient norm
    decides, so all ranks agree) and the scale halves; after `window_nimg` images without a skip it doubles.
    A fixed scale (`dynamic=False`, e.g. EDM2's 1) never changes; non-finite steps are still skipped.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        dynamic: bool = True,
        window_nimg: int = 256_000,
        min_scale: float = 1.0,
        max_scale: float = 2.0**24,
    ):
        self.scale = float(init_scale)
        self.dynamic = dynamic
        self.window_nimg = int(window_nimg)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.clean_nimg = 0  # Images since the last skipped step (or the last growth).
        self.overflows = 0  # Steps skipped with this scaler active.

    def update(self, applied: bool, batch_nimg: int) -> str:
        """After a step: adjust the scale. Returns a short note when it changed ('' otherwise)."""
        if not applied:
            self.overflows += 1
            self.clean_nimg = 0
            if self.dynamic and self.scale > self.min_scale:
                old, self.scale = self.scale, max(self.scale / 2, self.min_scale)
                return f"loss scale {old:g} -> {self.scale:g}"
            return ""
        self.clean_nimg += batch_nimg
        if self.dynamic and self.clean_nimg >= self.window_nimg and self.scale < self.max_scale:
            old, self.scale = self.scale, min(self.scale * 2, self.max_scale)
            self.clean_nimg = 0
            return f"loss scale {old:g} -> {self.scale:g}"
        return ""

    @staticmethod
    def unscale_factor_for(scale: float, grad_norm_scaled: float, clip: float) -> tuple[float, float]:
        """(factor to multiply gradients scaled by `scale` with, true gradient norm): 1/scale, times the clip
        factor clip/norm when the true norm exceeds `clip` > 0 (the clipping rule of torch and DeepSpeed)."""
        true_norm = grad_norm_scaled / scale
        factor = 1.0 / scale
        if clip > 0 and math.isfinite(true_norm) and true_norm > clip:
            factor *= clip / (true_norm + 1e-6)
        return factor, true_norm

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_nimg": self.clean_nimg, "overflows": self.overflows}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.clean_nimg = int(state.get("clean_nimg", 0))
        self.overflows = int(state.get("overflows", 0))
