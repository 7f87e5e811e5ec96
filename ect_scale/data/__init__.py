"""Data: encoders (pixels / SD-VAE latents), shard writing (`tools/make_shards.py`) and the streaming loader.

    stream = build_train_stream(cfg.data, batch_gpu=32, rank=rank, world_size=world, seed=cfg.train.seed)
    stream.load_state_dict(saved)            # optional: exact resume (same world size and workers)
    raw, labels = next(stream)               # CPU tensors; x0 = stream.encoder.encode(raw.cuda(), generator)
    stream.counters()                        # e.g. {"corrupt_shards_skipped": 0, ...} for TensorBoard
    state = stream.state_dict(); stream.close()

See docs/data.md for the shard format, determinism, resume guarantees and object-storage setup.
"""

from ect_scale.data.encoders import LatentEncoder, PixelEncoder, build_encoder, load_vae
from ect_scale.data.loader import TrainStream
from ect_scale.data.manifest import Manifest, ManifestError, load_manifest
from ect_scale.data.storage import StorageError, StorageOptions
from ect_scale.data.stream import build_train_stream
from ect_scale.data.synthetic import SyntheticStream

__all__ = [
    "LatentEncoder",
    "PixelEncoder",
    "build_encoder",
    "load_vae",
    "build_train_stream",
    "TrainStream",
    "SyntheticStream",
    "Manifest",
    "ManifestError",
    "load_manifest",
    "StorageError",
    "StorageOptions",
]
