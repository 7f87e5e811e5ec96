"""Data configuration: streamed WebDataset shards (local or any fsspec URL such as s3://), or synthetic data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ect_scale.config.base import check


@dataclass
class DataConfig:
    kind: Literal["shards", "synthetic"] = "shards"  # synthetic = Gaussian latents with random labels (benchmarks).
    url: str = ""                         # Shard manifest (manifest.json) or brace pattern, local path or fsspec URL.
    num_workers: int = 4                  # DataLoader worker processes per rank.
    start_method: Literal["spawn", "forkserver"] = "forkserver"  # Never fork with s3fs (fsspec docs).
    prefetch_factor: int = 4              # Batches prefetched per worker.
    shuffle_buffer: int = 2000            # Sample shuffle buffer per worker (0 = no sample shuffle).
    endpoint_url: Optional[str] = None    # S3-compatible endpoint override (MinIO, Ceph); else FSSPEC_S3_ENDPOINT_URL/AWS config.

    def validate(self, path: str = "data") -> None:
        p = path or "data"
        if self.kind == "shards":
            check(bool(self.url), f"{p}.url", "is required for data.kind=shards",
                  "point it at the manifest.json written by tools/make_shards.py (local path or s3://...)")
        check(self.num_workers >= 0, f"{p}.num_workers", "must be >= 0", "use 4-8 per GPU")
        check(self.prefetch_factor >= 1, f"{p}.prefetch_factor", "must be >= 1", "use 2-4")
        check(self.shuffle_buffer >= 0, f"{p}.shuffle_buffer", "must be >= 0", "use e.g. 2000")
