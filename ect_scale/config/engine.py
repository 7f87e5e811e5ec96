"""DeepSpeed engine configuration: ZeRO stage, precision, communication, compilation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ect_scale.config.base import check


@dataclass
class EngineConfig:
    zero_stage: int = 1                   # ZeRO stage 0-3 (1 or 2 recommended; 3 for models that don't fit).
    precision: Literal["bf16", "fp32"] = "bf16"  # Parameter/activation precision; master weights stay fp32.
    communication_dtype: Literal["fp32", "bf16"] = "fp32"  # Gradient all-reduce dtype (fp32 avoids bf16 drift).
    grad_accum_dtype: Literal["fp32", "bf16"] = "fp32"     # Gradient accumulation dtype.
    overlap_comm: bool = True             # Overlap gradient reduction with backward.
    reduce_bucket_size: int = 500_000_000  # Elements per reduction bucket.
    offload_optimizer: Literal["none", "cpu"] = "none"  # ZeRO-Offload of optimizer state (for XXL on one card).
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # Process-group backend; auto = nccl on GPU, gloo on CPU.
    compile: bool = False                 # torch.compile the network.
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"  # reduce-overhead = CUDA graphs.
    combo_kernels: bool = False           # Inductor: fuse independent small kernels horizontally (fewer launches).
    channels_last: bool = False           # NHWC memory format for convolutions.
    graph_weight_norm: bool = True        # Replay forced weight normalisation of the masters as CUDA graphs (GPU only).
    tf32: bool = True                     # Allow TF32 for remaining fp32 matmuls/convs (never in FID statistics).

    def validate(self, path: str = "engine") -> None:
        p = path or "engine"
        check(self.zero_stage in (0, 1, 2, 3), f"{p}.zero_stage", f"must be 0, 1, 2 or 3 (got {self.zero_stage})",
              "use 1 or 2 for EDM2 sizes up to XXL")
        check(self.reduce_bucket_size > 0, f"{p}.reduce_bucket_size", "must be > 0", "use 5e8")
        check(not (self.offload_optimizer == "cpu" and self.zero_stage == 0), f"{p}.offload_optimizer",
              "CPU offload needs ZeRO stage >= 1", "set engine.zero_stage to 1, 2 or 3")
        check(not (self.precision == "bf16" and self.zero_stage == 0), f"{p}.zero_stage",
              "bf16 needs ZeRO stage >= 1 (DeepSpeed's stage-0 bf16 path keeps no fp32 master weights)",
              "use engine.zero_stage=1, or engine.precision=fp32 for stage 0")
