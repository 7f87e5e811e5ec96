"""Plain progress lines for long tools (readable in SLURM logs and terminals alike)."""

from __future__ import annotations

import time
from typing import Callable


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts processed items and prints `prefix done/total | rate | ETA | skipped` at most every `interval_s`."""

    def __init__(self, prefix: str, total: int, interval_s: float = 10.0, log: Callable[[str], None] = print):
        self.prefix, self.total, self.interval_s, self.log = prefix, total, interval_s, log
        self.done = self.skipped = 0
        self.start = self.last = time.monotonic()

    def advance(self, n: int, skipped: int = 0) -> None:
        self.done += n
        self.skipped += skipped
        if time.monotonic() - self.last >= self.interval_s:
            self.line()

    def line(self, message: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval_s:
            return
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        status = (
            f"{self.done}/{self.total} img | {rate:.1f} img/s | elapsed {format_duration(now - self.start)} | "
            f"ETA {format_duration(eta)} | skipped {self.skipped}"
        )
        self.log(f"{self.prefix} {message + ' | ' if message else ''}{status}")
        self.last = now
