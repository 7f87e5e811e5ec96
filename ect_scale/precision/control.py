"""The trainer's side of the precision schedule (`ect_scale.precision.modes`): switching modes at stage boundaries,
checking rounding error against ECT's signal once per stage (`ect_scale.precision.rounding`), logging compile times."""

from __future__ import annotations

from typing import Callable, Optional

from ect_scale.ect.schedules import stage_at
from ect_scale.precision.modes import mode_at
from ect_scale.precision.rounding import stage_check


def precision_text(engine_cfg) -> str:
    """The config table's description of a run's precision."""
    sched = ", ".join(f"{m} from stage {s}" for s, m in engine_cfg.schedule())
    text = engine_cfg.precision + (f" ({sched})" if sched else "")
    return f"{text}, {engine_cfg.resolved_param_dtype()} parameter copy, fp32 masters"


class PrecisionControl:
    """The trainer's precision schedule: before a step, switch to the mode `mode_at(nimg)` asks for (logged; a
    compiled network compiles once per new mode) and, once per ECT stage, compare that mode's rounding error of
    f(x_t) - f(x_r) with the signal (`rounding.stage_check`; a warning when the error is larger); after a step that
    compiled, log how long it took. Pure function of images seen, so a resumed run switches at the same images."""

    def __init__(
        self, engine_cfg, ect_cfg, engine, say: Callable[[str], None] = print, compile_cache: Optional[str] = None
    ):
        self.engine_cfg, self.ect_cfg = engine_cfg, ect_cfg
        self.engine, self.say, self.compile_cache = engine, say, compile_cache
        self.compile_pending = engine_cfg.compile
        self.checked_stage = -1
        self.last_ratio: Optional[float] = None  # The latest check's error / signal (reported with the next status).

    def scalars(self) -> dict[str, float]:
        """Scalars for the status report: the mode (0 bf16, 1 fp16, 2 tf32, 3 fp32) and the last check."""
        out = {"Precision/mode": float(("bf16", "fp16", "tf32", "fp32").index(self.engine.mode))}
        if self.last_ratio is not None:
            out["Precision/error_over_signal"] = self.last_ratio
        return out

    def before_step(self, nimg: int, probe) -> None:
        """`probe()` returns (encoder, raw, labels) of a micro-batch to measure on."""
        mode = mode_at(nimg, self.engine_cfg, self.ect_cfg)
        stage = stage_at(nimg, self.ect_cfg)
        if mode != self.engine.mode:
            old = self.engine.mode
            self.engine.set_precision(mode)
            self.compile_pending = self.engine_cfg.compile
            self.say(
                f"precision: {old} -> {mode} at {nimg:,} images (stage {stage})"
                + ("; the network compiles once for it" if self.engine_cfg.compile else "")
            )
        if self.engine_cfg.precision_check and self.ect_cfg.objective == "ect" and stage != self.checked_stage:
            self.checked_stage = stage
            self._check(nimg, probe)

    def _check(self, nimg: int, probe) -> None:
        encoder, raw, labels = probe()
        eng = self.engine
        result = stage_check(eng.module, encoder, raw, labels, nimg, self.ect_cfg, eng.mode, raw.device)
        eng.set_precision(eng.mode)  # Re-applies the mode's TF32 switches.
        if result is None:
            return
        ratio, text = result
        self.last_ratio = ratio
        self.say(
            f"WARNING: {text}: the rounding noise exceeds the signal ECT learns from. Fix: use "
            "engine.precision=fp16 or tf32 for this stage (engine.precision_schedule; docs/precision.md)"
            if ratio > 1
            else text
        )

    def after_step(self, step_sec: float) -> None:
        if self.compile_pending:
            self.compile_pending = False
            self.say(
                f"compile: the first {self.engine.mode} step took {step_sec:.1f} s including torch.compile "
                f"(cache: {self.compile_cache or 'torch default'})"
            )
