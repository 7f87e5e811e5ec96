"""`data.kind: synthetic`: random raw data of the network's shape, with the `TrainStream` interface (benchmarks).

Latent moments are drawn around EDM2's ImageNet-512 statistics (mean ~ N(raw_mean, raw_std) per channel, a small
positive std), so `LatentEncoder.encode` yields x0 with about unit-scale statistics; pixels are uniform uint8.
Batch k of rank r depends only on (seed, r, k): a resumed run continues the same sequence.
"""

from __future__ import annotations

from typing import Optional

import torch

from ect_scale.data.encoders import VAE_DOWNSAMPLE, LatentEncoder, PixelEncoder
from ect_scale.data.manifest import Manifest
from ect_scale.data.order import derive_seed


class SyntheticStream:
    kind = "synthetic"
    batches_per_epoch: Optional[int] = None  # Endless: no epochs.

    def __init__(self, cfg, batch_gpu: int, rank: int, world_size: int, seed: int):
        self.cfg, self.batch_gpu, self.rank, self.world_size, self.seed = cfg, batch_gpu, rank, world_size, seed
        res = cfg.synthetic_resolution
        latent = cfg.synthetic_encoder == "sd-vae"
        self.encoder = (LatentEncoder(vae=cfg.vae) if cfg.vae else LatentEncoder()) if latent else PixelEncoder()
        shape = [self.encoder.raw_channels, res, res]
        self.manifest = Manifest(
            url="synthetic",
            shards=[],
            raw_shape=shape,
            raw_dtype="float16" if latent else "uint8",
            resolution=res * VAE_DOWNSAMPLE if latent else res,
            label_dim=cfg.synthetic_label_dim,
            encoder=self.encoder.describe(),
            source={"kind": "synthetic"},
        )
        self.batch = 0
        self.epoch, self.resume_path = 0, None

    def __iter__(self) -> "SyntheticStream":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(derive_seed("synthetic", self.seed, self.rank, self.batch) % 2**63)
        n, (c, h, w) = self.batch_gpu, self.manifest.raw_shape
        if isinstance(self.encoder, LatentEncoder):
            mean = torch.tensor(self.encoder.raw_mean).view(1, -1, 1, 1)
            std = torch.tensor(self.encoder.raw_std).view(1, -1, 1, 1)
            mu = mean + std * torch.randn(n, c // 2, h, w, generator=g)
            sigma = 0.05 + 0.1 * torch.rand(n, c // 2, h, w, generator=g)
            raw = torch.cat([mu, sigma], dim=1).to(torch.float16)
        else:
            raw = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
        label_dim = self.manifest.label_dim
        labels = torch.randint(0, label_dim, (n,), generator=g) if label_dim else torch.zeros(n, dtype=torch.int64)
        self.batch += 1
        if self.cfg.pin_memory and torch.cuda.is_available():
            raw, labels = raw.pin_memory(), labels.pin_memory()
        return raw, labels

    def counters(self) -> dict[str, float]:
        names = ("corrupt_shards_skipped", "samples_skipped", "refill_passes", "read_retries", "outages", "outage_sec")
        return {name: 0 for name in names}

    def state_dict(self) -> dict:
        return {"kind": self.kind, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(
                f"data state of kind {state.get('kind')!r} cannot resume a synthetic stream. Fix: resume "
                "with the data.kind the checkpoint was written with"
            )
        self.batch, self.resume_path = int(state["batch"]), "exact"

    def summary(self) -> str:
        return (
            f"data: synthetic {self.manifest.raw_dtype} {self.manifest.raw_shape} batches of {self.batch_gpu}, "
            f"label_dim {self.manifest.label_dim}"
        )

    def close(self) -> None:
        pass

    def __enter__(self) -> "SyntheticStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
