"""Training-loop configuration: duration and batch sizes, all counted in images."""

from __future__ import annotations

from dataclasses import dataclass

from ect_scale.config.base import check


@dataclass
class TrainLoopConfig:
    total_nimg: int = 12_800_000  # Training duration in images seen (accepts 12.8M, 128Mi, ...).
    batch_size: int = 128  # Global batch (all GPUs, all accumulation rounds).
    batch_gpu: int = 32  # Micro-batch per GPU; accumulation rounds = batch_size / (batch_gpu * world).
    seed: int = 0  # Seeds t, noise, dropout and latent sampling per (rank, nimg).
    status_nimg: int = 128_000  # Interval of status lines, TensorBoard scalars and stats.jsonl rows.
    slice_nimg: int = 0  # Stop (with a checkpoint) after this many images in this invocation; 0 = off.
    hang_timeout_s: float = 1800.0  # A rank with no progress this long dumps its stacks and exits (code 3); 0 = off.

    def validate(self, path: str = "train") -> None:
        p = path or "train"
        check(self.batch_size > 0, f"{p}.batch_size", "must be > 0", "use e.g. 1024")
        check(self.batch_gpu > 0, f"{p}.batch_gpu", "must be > 0", "lower it until a micro-batch fits on one GPU")
        check(
            self.batch_size % self.batch_gpu == 0,
            f"{p}.batch_size",
            f"must be a multiple of train.batch_gpu={self.batch_gpu} (got {self.batch_size})",
            "choose batch_size = batch_gpu * world_size * accumulation_rounds",
        )
        check(self.total_nimg > 0, f"{p}.total_nimg", "must be > 0", "set the training length, e.g. 12.8M")
        check(self.status_nimg > 0, f"{p}.status_nimg", "must be > 0", "use e.g. 128k")
        check(self.slice_nimg >= 0, f"{p}.slice_nimg", "must be >= 0", "use 0 to disable slicing")
        check(
            self.hang_timeout_s >= 0,
            f"{p}.hang_timeout_s",
            "must be >= 0",
            "use e.g. 1800 (longer than the slowest save, evaluation or resume), or 0 to turn hang detection off",
        )

    def accumulation_rounds(self, world_size: int) -> int:
        """Gradient-accumulation rounds per optimizer step for `world_size` data-parallel ranks."""
        per_rank, rem = divmod(self.batch_size, world_size)
        check(
            rem == 0,
            "train.batch_size",
            f"{self.batch_size} is not divisible by the world size {world_size}",
            "pick a global batch that is a multiple of the number of GPUs",
        )
        rounds, rem = divmod(per_rank, self.batch_gpu)
        check(
            rem == 0 and rounds >= 1,
            "train.batch_gpu",
            f"per-GPU batch {per_rank} (= {self.batch_size} / {world_size} GPUs) is not a multiple of "
            f"batch_gpu={self.batch_gpu}",
            f"set --train.batch_gpu to a divisor of {per_rank}",
        )
        return rounds
