"""DeepSpeed engine configuration: ZeRO stage, precision (and its schedule over ECT stages), communication,
compilation. Master weights and Adam are fp32 in every precision mode (docs/precision.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ect_scale.config.base import ConfigError, check

PRECISION_MODES = ("bf16", "fp16", "tf32", "fp32")


def parse_precision_schedule(entries, option: str = "engine.precision_schedule") -> list[tuple[int, str]]:
    """["0:bf16", "2:fp16"] -> [(0, 'bf16'), (2, 'fp16')], validated (stages strictly increasing, known modes)."""
    out: list[tuple[int, str]] = []
    for entry in entries:
        stage, sep, mode = str(entry).partition(":")
        if not sep or not stage.strip().isdigit() or mode.strip() not in PRECISION_MODES:
            raise ConfigError(
                f"{option}: cannot parse {entry!r}. Fix: write STAGE:MODE entries with MODE one of "
                f"{', '.join(PRECISION_MODES)}, e.g. [0:bf16, 2:fp16]"
            )
        out.append((int(stage), mode.strip()))
    stages = [s for s, _ in out]
    if stages != sorted(set(stages)):
        raise ConfigError(f"{option}: stages must increase strictly, got {stages}. Fix: list each stage once, in order")
    return out


@dataclass
class EngineConfig:
    zero_stage: int = 1  # ZeRO stage 0-3 (1 or 2 recommended; 3 for models that don't fit).
    precision: Literal["bf16", "fp16", "tf32", "fp32"] = (
        "fp16"  # U-Net compute: bf16 | fp16 (EDM2, loss-scaled) | tf32 (official ECT) | fp32 (TF32 off).
    )
    precision_schedule: list[str] = field(
        default_factory=list
    )  # Switches at ECT stage boundaries, "STAGE:MODE" (e.g. [0:bf16, 2:fp16]); [] = `precision` throughout.
    param_dtype: Literal["auto", "bf16", "fp32"] = (
        "auto"  # Module parameter copy: auto = bf16 if a bf16/fp16 mode is used, else fp32.
    )
    loss_scale: Union[float, Literal["dynamic"]] = (
        "dynamic"  # fp16 loss scale: dynamic (start 2^16, halve on overflow) or a fixed number (EDM2: 1).
    )
    loss_scale_window_nimg: int = 256_000  # Dynamic loss scale: double after this many images without an overflow.
    communication_dtype: Literal["fp32", "bf16"] = (
        "fp32"  # Gradient all-reduce dtype with bf16 parameters (fp32 avoids bf16 drift).
    )
    grad_accum_dtype: Literal["fp32", "bf16"] = "fp32"  # Gradient accumulation dtype with bf16 parameters.
    overlap_comm: bool = True  # Overlap gradient reduction with backward.
    reduce_bucket_size: int = 500_000_000  # Elements per reduction bucket.
    offload_optimizer: Literal["none", "cpu"] = "none"  # ZeRO-Offload of optimizer state (for XXL on one card).
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # Process-group backend; auto = nccl on GPU, gloo on CPU.
    compile: bool = False  # torch.compile the network (one compile per precision mode used).
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = (
        "default"  # reduce-overhead = CUDA graphs.
    )
    compile_cache_dir: Optional[str] = (
        "auto"  # Inductor/Triton cache kept across restarts; auto = <run_dir>/compile_cache, null = torch's default.
    )
    combo_kernels: bool = False  # Inductor: fuse independent small kernels horizontally (fewer launches).
    channels_last: bool = False  # NHWC memory format for convolutions.
    graph_weight_norm: bool = True  # Replay forced weight normalisation of the masters as CUDA graphs (GPU only).
    precision_check: bool = (
        True  # At each precision switch and stage start, measure rounding error vs ECT's signal; warn if it exceeds it.
    )

    def schedule(self) -> list[tuple[int, str]]:
        """`precision_schedule` parsed: [(first stage, mode), ...]."""
        return parse_precision_schedule(self.precision_schedule)

    def modes_used(self) -> list[str]:
        """Every precision mode the run can use, in order of first use."""
        return list(dict.fromkeys([self.precision] + [m for _, m in self.schedule()]))

    def resolved_param_dtype(self) -> str:
        """bf16 or fp32: 'auto' stores bf16 when a bf16/fp16 mode is used (docs/precision.md), else fp32."""
        if self.param_dtype != "auto":
            return self.param_dtype
        return "bf16" if any(m in ("bf16", "fp16") for m in self.modes_used()) else "fp32"

    def validate(self, path: str = "engine") -> None:
        p = path or "engine"
        check(
            self.zero_stage in (0, 1, 2, 3),
            f"{p}.zero_stage",
            f"must be 0, 1, 2 or 3 (got {self.zero_stage})",
            "use 1 or 2 for EDM2 sizes up to XXL",
        )
        check(self.reduce_bucket_size > 0, f"{p}.reduce_bucket_size", "must be > 0", "use 5e8")
        check(
            not (self.offload_optimizer == "cpu" and self.zero_stage == 0),
            f"{p}.offload_optimizer",
            "CPU offload needs ZeRO stage >= 1",
            "set engine.zero_stage to 1, 2 or 3",
        )
        parse_precision_schedule(self.precision_schedule, f"{p}.precision_schedule")
        check(
            not (self.resolved_param_dtype() == "bf16" and self.zero_stage == 0),
            f"{p}.zero_stage",
            "bf16 parameters need ZeRO stage >= 1 (DeepSpeed's stage-0 bf16 path keeps no fp32 master weights)",
            "use engine.zero_stage=1, or engine.param_dtype=fp32 for stage 0",
        )
        if self.loss_scale != "dynamic":
            check(
                float(self.loss_scale) > 0,
                f"{p}.loss_scale",
                f"must be > 0 or 'dynamic' (got {self.loss_scale})",
                "use dynamic, or 1 as EDM2",
            )
        check(self.loss_scale_window_nimg > 0, f"{p}.loss_scale_window_nimg", "must be > 0", "use e.g. 256k")
