"""Deterministic data order: pure functions of (seed, epoch, layout), shared by the shard writer and the loader.

Randomness comes from `random.Random(k).random()` with integer seeds, whose stream Python guarantees to keep
across versions (unlike numpy's `Generator` or `torch.randperm`), so a resumed run reproduces the order even
after a software upgrade.

Layout of one epoch (world size R ranks, W workers per rank, batch B per rank):
  1. global shard order  = permutation(num_shards, key=(seed, epoch))          -- identical on every rank
  2. rank r's shards     = order[r::R]; worker w's shards = those[w::W]        -- i.e. order[r + R*w :: R*W]
  3. every worker yields the same `batches_per_worker` batches per epoch, so every rank yields
     W * batches_per_worker batches and DataLoader's round-robin puts rank batch k on worker k % W.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence


def derive_seed(*key) -> int:
    """A 64-bit seed from any tuple of ints/strings (stable across processes and Python versions)."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")


def permutation(n: int, *key) -> list[int]:
    """A uniformly random permutation of range(n) (Fisher-Yates) determined by `key`."""
    rng = random.Random(derive_seed(*key))
    out = list(range(n))
    for i in range(n - 1, 0, -1):
        j = min(int(rng.random() * (i + 1)), i)
        out[i], out[j] = out[j], out[i]
    return out


def shuffled(items: Iterator, buffer_size: int, rng: random.Random) -> Iterator:
    """Buffered sample shuffle: keep `buffer_size` items, emit a random one per arrival, drain at the end."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            j = min(int(rng.random() * len(buffer)), len(buffer) - 1)
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    while buffer:
        j = min(int(rng.random() * len(buffer)), len(buffer) - 1)
        buffer[j], buffer[-1] = buffer[-1], buffer[j]
        yield buffer.pop()


def balanced_split(indices: Sequence[int], num_parts: int) -> list[list[int]]:
    """Cut `indices` into `num_parts` contiguous parts whose sizes differ by at most one."""
    base, extra = divmod(len(indices), num_parts)
    parts, start = [], 0
    for p in range(num_parts):
        size = base + (1 if p < extra else 0)
        parts.append(list(indices[start : start + size]))
        start += size
    return parts


@dataclass(frozen=True)
class Layout:
    """Everything the sample order depends on. Two runs with equal layouts see identical batches."""

    seed: int
    world_size: int
    num_workers: int  # DataLoader workers per rank; 0 counts as one (in-process) worker.
    batch_gpu: int
    shuffle_buffer: int
    shard_counts: tuple[int, ...]  # Samples per shard, in manifest order.

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    @property
    def readers(self) -> int:
        """Readers across the job (ranks x workers); each reads whole shards."""
        return self.world_size * self.workers

    def epoch_shards(self, epoch: int) -> list[int]:
        return permutation(len(self.shard_counts), "shards", self.seed, epoch)

    def worker_shards(self, epoch: int, rank: int, worker: int) -> list[int]:
        """Shards read by (rank, worker) in `epoch`: split by rank, then by worker, after the global shuffle."""
        return self.epoch_shards(epoch)[rank :: self.world_size][worker :: self.workers]

    @property
    def batches_per_worker(self) -> int:
        """Fixed per-epoch batch count of every worker: what the worker with the fewest samples can fill, in any
        epoch (the `floor(S / readers)` smallest shards)."""
        smallest = sorted(self.shard_counts)[: len(self.shard_counts) // self.readers]
        return sum(smallest) // self.batch_gpu

    @property
    def batches_per_epoch(self) -> int:
        """Batches per rank per epoch (identical on every rank)."""
        return self.workers * self.batches_per_worker

    def worker_batches_done(self, rank_batches: int, worker: int) -> int:
        """Batches worker `worker` produced when the rank has consumed `rank_batches` (round-robin order)."""
        return max(0, (rank_batches - worker + self.workers - 1) // self.workers)

    def sample_rng(self, epoch: int, rank: int, worker: int, shard_pass: int) -> random.Random:
        return random.Random(derive_seed("samples", self.seed, epoch, rank, worker, shard_pass))

    def describe(self) -> dict:
        d = asdict(self)
        d["num_shards"] = len(d.pop("shard_counts"))
        d["shards_digest"] = hashlib.sha256(repr(self.shard_counts).encode()).hexdigest()[:16]
        return d
