"""Data configuration: streamed WebDataset shards (local or any fsspec URL such as s3://), or synthetic data.

Shards and their `manifest.json` are written by `tools/make_shards.py`; `docs/data.md` describes the format, the
loader's determinism and resume guarantees, and how credentials and endpoints reach every node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ect_scale.config.base import check


@dataclass
class DataConfig:
    kind: Literal["shards", "synthetic"] = "shards"  # synthetic = random raw data of the shape below (benchmarks).
    url: str = ""  # manifest.json written by tools/make_shards.py (or its folder); local path or fsspec URL.
    num_workers: int = 4  # DataLoader worker processes per rank (0 = read in the training process).
    start_method: Literal["spawn", "forkserver"] = "forkserver"  # Never fork with s3fs (fsspec docs).
    prefetch_factor: int = 4  # Batches prefetched per worker.
    shuffle_buffer: int = 2000  # Sample shuffle buffer per worker, in samples (0 = no sample shuffle).
    pin_memory: bool = True  # Pin batches for faster host-to-GPU copies (ignored without CUDA).
    endpoint_url: Optional[str] = (
        None  # S3-compatible endpoint (MinIO, Ceph); else FSSPEC_S3_ENDPOINT_URL / AWS_ENDPOINT_URL.
    )
    connect_timeout_s: float = 10.0  # Object-store connection timeout per request.
    read_timeout_s: float = 60.0  # Object-store read timeout per request.
    retries: int = 5  # Re-opens of a shard at its byte offset after an unexpected read error (not an outage).
    outage_window_s: float = 600.0  # Ride out a store outage this long (capped back-off), then stop the run.
    block_size_mib: int = 16  # Read-ahead block size for shard reads from object storage.
    vae: Optional[str] = None  # Where to load the SD-VAE decoder from (local dir or hub id); None = the manifest's.
    synthetic_encoder: Literal["sd-vae", "pixels"] = "sd-vae"  # kind=synthetic: latent moments [N,8,h,w] or uint8 RGB.
    synthetic_resolution: int = 64  # kind=synthetic: spatial size of the raw data (the network's img_resolution).
    synthetic_label_dim: int = 1000  # kind=synthetic: number of classes (0 = unconditional).

    def validate(self, path: str = "data") -> None:
        p = path or "data"
        if self.kind == "shards":
            check(
                bool(self.url),
                f"{p}.url",
                "is required for data.kind=shards",
                "point it at the manifest.json written by tools/make_shards.py (local path or s3://...)",
            )
            check(
                not self.url.rstrip("/").endswith(".tar") and "{" not in self.url,
                f"{p}.url",
                f"must name a manifest, not tar shards ({self.url})",
                "point it at the manifest.json next to the shards (the loader needs its per-shard sample counts)",
            )
        check(self.num_workers >= 0, f"{p}.num_workers", "must be >= 0", "use 4-8 per GPU")
        check(self.prefetch_factor >= 1, f"{p}.prefetch_factor", "must be >= 1", "use 2-4")
        check(self.shuffle_buffer >= 0, f"{p}.shuffle_buffer", "must be >= 0", "use e.g. 2000")
        check(self.connect_timeout_s > 0, f"{p}.connect_timeout_s", "must be > 0", "use e.g. 10")
        check(self.read_timeout_s > 0, f"{p}.read_timeout_s", "must be > 0", "use e.g. 60")
        check(self.retries >= 0, f"{p}.retries", "must be >= 0", "use e.g. 5")
        check(
            self.outage_window_s >= 0,
            f"{p}.outage_window_s",
            "must be >= 0",
            "use e.g. 600 (seconds that reads wait for a store to come back; 0 = stop at the first failed request)",
        )
        check(self.block_size_mib >= 1, f"{p}.block_size_mib", "must be >= 1", "use 16-64 for sequential tar reads")
        check(
            self.synthetic_resolution >= 1,
            f"{p}.synthetic_resolution",
            "must be >= 1",
            "set it to network.img_resolution",
        )
        check(
            self.synthetic_label_dim >= 0,
            f"{p}.synthetic_label_dim",
            "must be >= 0",
            "set it to network.label_dim (0 = unconditional)",
        )
