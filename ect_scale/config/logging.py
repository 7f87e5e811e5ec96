"""Monitoring configuration: TensorBoard, stats.jsonl, terminal output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class LoggingConfig:
    tensorboard: bool = True  # Write TensorBoard event files to <run_dir>/tensorboard.
    jsonl: bool = True  # Append scalars to <run_dir>/stats.jsonl.
    progress: Literal["auto", "rich", "plain", "none"] = (
        "auto"  # auto = rich bar on a TTY, plain status lines otherwise.
    )
    loss_buckets: int = 8  # Number of log-t buckets for per-noise-level loss curves.
    sample_grid: int = 64  # Samples per grid written at each EMA export (PNG + TensorBoard); 0 = off.
