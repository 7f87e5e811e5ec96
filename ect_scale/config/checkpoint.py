"""Checkpoint configuration: where, how often, and what to keep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ect_scale.config.base import check


@dataclass
class CheckpointConfig:
    enabled: bool = True                  # Save training state (off only for benchmarks and throwaway runs).
    dir: Optional[str] = None             # Local path or fsspec URL (s3://...); default <run_dir>/checkpoints.
    interval_nimg: int = 2_000_000        # Save every this many images (and at the end / on SIGTERM).
    keep_last: int = 3                    # Keep the newest K complete checkpoints ...
    keep_every_nimg: int = 0              # ... plus one every N images forever (0 = none).
    resume: bool = True                   # Re-running the same command resumes from the latest complete checkpoint.

    def validate(self, path: str = "checkpoint") -> None:
        p = path or "checkpoint"
        check(self.interval_nimg > 0, f"{p}.interval_nimg", "must be > 0", "use e.g. 2M")
        check(self.keep_last >= 1, f"{p}.keep_last", "must be >= 1", "keep at least the latest checkpoint")
        check(self.keep_every_nimg >= 0, f"{p}.keep_every_nimg", "must be >= 0", "use 0 to disable")
