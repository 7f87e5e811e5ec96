"""Periodic work counted in images seen: one rule for status lines, checkpoints, EMA exports and evaluations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """Work due every `nimg` images (0 = never). A step that takes training from `before` to `after` images is
    due when [before, after) crosses a multiple of `nimg`, so a batch that does not divide the interval still
    fires once per interval, and a resumed run fires at the same images as an uninterrupted one."""

    nimg: int

    def due(self, before_nimg: int, after_nimg: int) -> bool:
        return self.nimg > 0 and after_nimg // self.nimg > before_nimg // self.nimg
