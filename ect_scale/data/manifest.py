"""The shard manifest: what `tools/make_shards.py` wrote, and everything the loader needs to stream it.

`manifest.json` sits next to the shards. Shard names are relative to it, so a data set can be copied between
stores (local disk -> s3://) as a folder. Format `ect_scale.shards/1`:

    {"format": "ect_scale.shards/1",
     "shards": [{"name": "shard-000000.tar", "num_samples": 1250, "bytes": 82001920, "sha256": "..."}, ...],
     "num_samples": 1281167, "resolution": 512, "raw": {"shape": [8, 64, 64], "dtype": "float16"},
     "channels": 8, "label_dim": 1000, "class_names": ["n01440764", ...], "class_counts": [1300, ...],
     "encoder": {"kind": "sd-vae", "vae": "...", "raw_mean": [...], "raw_std": [...], ...},
     "source": {"kind": "image-tree", "path": "...", "num_images": 1281167},
     "skipped": {"count": 0, "items": [{"path": "...", "error": "..."}]},
     "seed": 0, "created": "2026-...Z", "created_by": "tools/make_shards.py"}

Each sample in a shard is `<key>.raw.npy` (the raw array), `<key>.cls` (the label as ASCII) and `<key>.src`
(the source image's path, for tracing a sample back).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from ect_scale.data.storage import StorageError, StorageOptions, dirname, join, read_bytes
from ect_scale.runtime.errors import UserError

FORMAT = "ect_scale.shards/1"
MANIFEST_NAME = "manifest.json"
RAW_EXT, LABEL_EXT, SOURCE_EXT = "raw.npy", "cls", "src"


class ManifestError(UserError, ValueError):
    """A manifest is malformed or does not match what the caller needs."""


@dataclass
class ShardInfo:
    name: str  # Relative to the manifest's folder.
    num_samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    url: str  # Where the manifest was read from (not stored in the file).
    shards: list[ShardInfo]
    raw_shape: list[int]  # One sample's raw array: [3,H,W] uint8 pixels or [8,h,w] latent moments.
    raw_dtype: str
    resolution: int  # Image resolution the source was cropped to.
    label_dim: int
    encoder: dict  # `encoder.describe()`; `encoders.build_encoder` rebuilds the encoder.
    class_counts: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=lambda: {"count": 0, "items": []})
    extra: dict = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def channels(self) -> int:
        return int(self.raw_shape[0])

    def shard_url(self, index: int) -> str:
        return join(dirname(self.url), self.shards[index].name)

    def check_fits(self, network: Any) -> None:
        """Raise a `ManifestError` naming both sides if the decoded samples or the classes do not fit `network`
        (a `NetworkConfig`: img_channels, img_resolution, label_dim)."""
        raw_c, raw_h = self.raw_shape[0], self.raw_shape[-1]
        channels = raw_c // 2 if self.encoder.get("kind") == "sd-vae" else raw_c  # Latent mean and std.
        if (channels, raw_h) != (network.img_channels, network.img_resolution) or self.label_dim != network.label_dim:
            raise ManifestError(
                f"data {self.url}: samples are {channels}x{raw_h}x{raw_h} with {self.label_dim} "
                f"classes, but the network expects {network.img_channels}x{network.img_resolution}x"
                f"{network.img_resolution} with {network.label_dim} classes",
                "pick the network preset that matches the shards (network.preset) or re-make the "
                "shards at the network's resolution",
            )

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "shards": [vars(s) for s in self.shards],
            "num_samples": self.num_samples,
            "resolution": self.resolution,
            "raw": {"shape": list(self.raw_shape), "dtype": self.raw_dtype},
            "channels": self.channels,
            "label_dim": self.label_dim,
            "class_names": self.class_names,
            "class_counts": self.class_counts,
            "encoder": self.encoder,
            "source": self.source,
            "skipped": self.skipped,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict, url: str) -> "Manifest":
        if d.get("format") != FORMAT:
            raise ManifestError(
                f"{url}: not an ect_scale shard manifest (format {d.get('format')!r}, expected "
                f"{FORMAT!r}). Fix: write the shards with tools/make_shards.py"
            )
        try:
            shards = [
                ShardInfo(str(s["name"]), int(s["num_samples"]), int(s["bytes"]), str(s["sha256"])) for s in d["shards"]
            ]
            known = {
                "format",
                "shards",
                "num_samples",
                "resolution",
                "raw",
                "channels",
                "label_dim",
                "class_names",
                "class_counts",
                "encoder",
                "source",
                "skipped",
            }
            return cls(
                url=url,
                shards=shards,
                raw_shape=[int(v) for v in d["raw"]["shape"]],
                raw_dtype=str(d["raw"]["dtype"]),
                resolution=int(d["resolution"]),
                label_dim=int(d["label_dim"]),
                encoder=dict(d["encoder"]),
                class_counts=list(d.get("class_counts", [])),
                class_names=list(d.get("class_names", [])),
                source=dict(d.get("source", {})),
                skipped=dict(d.get("skipped", {"count": 0, "items": []})),
                extra={k: v for k, v in d.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(
                f"{url}: malformed manifest ({type(e).__name__}: {e}). Fix: re-run "
                "tools/make_shards.py with the same arguments to rewrite it"
            ) from None


def manifest_url(url: str) -> str:
    """Accept the manifest itself or the folder holding it."""
    return url if url.rstrip("/").endswith(".json") else join(url.rstrip("/"), MANIFEST_NAME)


def load_manifest(url: str, options: Optional[StorageOptions] = None) -> Manifest:
    """Read and check a manifest; unreachable storage or a missing file raises `StorageError` with the fix."""
    url = manifest_url(url)
    try:
        blob = read_bytes(url, options or StorageOptions())
    except StorageError as e:
        if e.kind == "not-found":
            raise StorageError(
                f"{e}. The manifest is written last by tools/make_shards.py (by writer 0, once every "
                "shard is committed); if that is still running, wait for it",
                e.kind,
            ) from None
        raise
    try:
        data: Any = json.loads(blob)
    except ValueError as e:
        raise ManifestError(f"{url}: not valid JSON ({e}). Fix: re-run tools/make_shards.py to rewrite it") from None
    return Manifest.from_dict(data, url)
