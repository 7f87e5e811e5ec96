"""Checkpoint configuration: where, how often, what to keep, and how to recover (see docs/checkpoints.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

from ect_scale.config.base import check


@dataclass
class CheckpointConfig:
    enabled: bool = True  # Save training state (off only for benchmarks and throwaway runs).
    dir: Optional[str] = None  # Local/shared path or fsspec URL (s3://...); default <run_dir>/checkpoints.
    interval_nimg: int = 2_000_000  # Save every this many images (and at the end / on SIGTERM / SIGUSR1).
    keep_last: int = 3  # Keep the newest K complete checkpoints ...
    keep_every_nimg: int = 0  # ... plus the first one after every multiple of N images, forever (0 = none).
    resume: bool = True  # Re-running the same command resumes from the latest complete checkpoint.
    checksum: bool = True  # CRC32 of every file in the COMPLETE marker, verified before resuming (cannot be off).
    # Block training only to copy the state to host memory, write and commit in the background. auto = on when
    # training on GPUs; off on CPUs, where the writer would take cores from training (docs/checkpoints.md).
    async_save: Union[bool, Literal["auto"]] = "auto"
    staging_dir: Optional[str] = None  # Node-local scratch (object-store transfers, universal conversion); $TMPDIR.
    convert_workers: int = 4  # Processes for DeepSpeed's ds_to_universal (resume at another world size).
    max_consecutive_failures: int = 3  # Stop training after this many failed saves in a row (the last good stays).
    outage_window_s: float = 600.0  # Object storage: ride out an outage this long during save/resume, then stop.

    def use_async(self, device_type: str) -> bool:
        """Whether saves are asynchronous on this device type ("cuda" / "cpu")."""
        return self.async_save if isinstance(self.async_save, bool) else device_type == "cuda"

    def validate(self, path: str = "checkpoint") -> None:
        p = path or "checkpoint"
        check(self.interval_nimg > 0, f"{p}.interval_nimg", "must be > 0", "use e.g. 2M")
        check(self.keep_last >= 1, f"{p}.keep_last", "must be >= 1", "keep at least the latest checkpoint")
        check(self.keep_every_nimg >= 0, f"{p}.keep_every_nimg", "must be >= 0", "use 0 to disable")
        check(
            self.checksum,
            f"{p}.checksum",
            "cannot be false: without CRC32s a damaged file would be resumed from as weights (a flipped byte in an EMA "
            "shard gave non-finite exported networks); the background writer computes them off the training path",
            f"remove {p}.checksum from the config (resuming verifies each file at under 1 s per GB and rank)",
        )
        check(self.convert_workers >= 1, f"{p}.convert_workers", "must be >= 1", "use 1-8")
        check(
            self.max_consecutive_failures >= 1,
            f"{p}.max_consecutive_failures",
            "must be >= 1",
            "use e.g. 3 (training stops after that many failed saves in a row)",
        )
        check(
            self.outage_window_s >= 0,
            f"{p}.outage_window_s",
            "must be >= 0",
            "use e.g. 600 (seconds that checkpoint I/O waits for the store to come back; 0 = no waiting)",
        )
