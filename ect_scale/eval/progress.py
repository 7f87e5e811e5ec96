"""Rank-0 progress for distributed evaluation loops, and per-stage timing.

A rich progress bar when rank 0 writes to a terminal; plain EDM2-style status lines otherwise (cluster log
files, where live bars garble the output). Counts are estimated as local images x world size, so the loop needs
no per-batch collective; the exact count comes with the final all-reduce.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator, Literal, Optional

import torch

from ect_scale.runtime.dist import get_world_size, is_main

ProgressMode = Literal["auto", "rich", "plain", "none"]


def format_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
    """`advance(n_local)` after each batch; `close()` at the end. Silent on ranks other than 0."""

    def __init__(self, total: int, desc: str, mode: ProgressMode = "auto", interval_s: float = 60.0):
        self.total, self.desc, self.interval_s = int(total), desc, float(interval_s)
        self.world_size = get_world_size()
        self.done = 0
        self.start = self.last_print = time.perf_counter()
        self._bar = self._task = None
        if not is_main() or mode == "none":
            self.mode = "none"
            return
        if mode == "auto":
            from rich.console import Console

            mode = "rich" if Console().is_terminal else "plain"
        self.mode = mode
        if mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("images"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._bar.start()
            self._task = self._bar.add_task(desc, total=self.total)

    def advance(self, n_local: int) -> None:
        self.done = min(self.total, self.done + n_local * self.world_size)
        if self.mode == "rich":
            self._bar.update(self._task, completed=self.done)
        elif self.mode == "plain" and time.perf_counter() - self.last_print >= self.interval_s:
            self._print_line()

    def _print_line(self) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        print(
            f"[{self.desc}] {self.done:,}/{self.total:,} images ({100 * self.done / max(self.total, 1):.1f}%)  "
            f"{rate:.1f} img/s  elapsed {format_seconds(elapsed)}  eta {format_seconds(eta) if eta == eta else '?'}",
            flush=True,
        )
        self.last_print = time.perf_counter()

    def close(self) -> None:
        if self.mode == "rich" and self._bar is not None:
            self._bar.update(self._task, completed=self.total)
            self._bar.stop()
            self._bar = None
        elif self.mode == "plain":
            self.done = self.total
            self._print_line()
        self.mode = "none"

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StageTimer:
    """Wall seconds per pipeline stage. With `sync=True` the CUDA stream is synchronised at stage boundaries so
    each stage is charged its own GPU time (a small overhead; used by the benchmark, off otherwise)."""

    def __init__(self, device, sync: bool = True):
        self.sync = sync and torch.device(device).type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.images: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def stage(self, name: str, num_images: int = 0) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - t0
            self.images[name] += num_images

    def summary(self) -> dict:
        return {
            name: {
                "seconds": round(s, 4),
                "images": self.images[name],
                "img_per_s": round(self.images[name] / s, 2) if s > 0 else None,
            }
            for name, s in self.seconds.items()
        }


def stage(timer: Optional[StageTimer], name: str, num_images: int = 0):
    """`timer.stage(...)`, or a no-op without a timer."""
    return timer.stage(name, num_images) if timer is not None else contextlib.nullcontext()
