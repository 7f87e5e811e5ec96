"""`build_train_stream`: the training data stream of one rank, from `DataConfig`."""

from __future__ import annotations

import logging

from ect_scale.config.base import ConfigError
from ect_scale.data.encoders import build_encoder
from ect_scale.data.loader import TrainStream
from ect_scale.data.manifest import Manifest, load_manifest
from ect_scale.data.order import Layout
from ect_scale.data.storage import StorageOptions
from ect_scale.data.synthetic import SyntheticStream

log = logging.getLogger("ect_scale.data")


def build_train_stream(cfg, *, batch_gpu: int, rank: int, world_size: int, seed: int) -> TrainStream | SyntheticStream:
    """The `(raw, labels)` stream of rank `rank` (see `loader.TrainStream`; `kind: synthetic` -> `SyntheticStream`).

    Reads the manifest right away with short timeouts, so a wrong endpoint, missing credentials or a missing
    data set fail here, within seconds, with the URL and the fix. Worker processes start at the first batch.
    """
    cfg.validate()
    if batch_gpu < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"build_train_stream: need batch_gpu >= 1 and 0 <= rank < world_size (got batch_gpu "
            f"{batch_gpu}, rank {rank}, world_size {world_size})"
        )
    if cfg.kind == "synthetic":
        return SyntheticStream(cfg, batch_gpu, rank, world_size, seed)
    options = StorageOptions.from_config(cfg).resolved()
    manifest = load_manifest(cfg.url, options.fast_fail())
    layout = Layout(
        seed=seed,
        world_size=world_size,
        num_workers=cfg.num_workers,
        batch_gpu=batch_gpu,
        shuffle_buffer=cfg.shuffle_buffer,
        shard_counts=tuple(s.num_samples for s in manifest.shards),
    )
    check_layout(manifest, layout, warn=rank == 0)
    stream = TrainStream(cfg, manifest, layout, rank, options, build_encoder(manifest.encoder, cfg.vae))
    if rank == 0:
        log.info(stream.summary())
    return stream


def check_layout(manifest: Manifest, layout: Layout, warn: bool = True) -> None:
    """Every reader (rank x worker) needs whole shards and at least one batch per epoch (`ConfigError`); a
    warning (if `warn`) when the shards do not divide evenly."""
    num_shards, readers = len(manifest.shards), layout.readers
    fix_shards = (
        f"re-write the data with more, smaller shards (tools/make_shards.py --num-shards, a multiple of "
        f"{readers}), or lower data.num_workers"
    )
    if num_shards < readers:
        raise ConfigError(
            f"data.num_workers: {layout.world_size} ranks x {layout.workers} workers = {readers} readers "
            f"but {manifest.url} has only {num_shards} shards (each reader needs at least one). "
            f"Fix: {fix_shards}"
        )
    if layout.batches_per_worker < 1:
        raise ConfigError(
            f"train.batch_gpu: {layout.batch_gpu} is more than a worker's smallest epoch share "
            f"({sum(sorted(layout.shard_counts)[: num_shards // readers])} samples in "
            f"{num_shards // readers} shards). Fix: lower data.num_workers or the per-GPU batch, or "
            "write larger shards"
        )
    if num_shards % readers and warn:
        used = layout.batches_per_epoch * layout.batch_gpu * layout.world_size / max(1, manifest.num_samples)
        log.warning(
            f"data: {num_shards} shards do not divide evenly over {readers} readers ({layout.world_size} ranks "
            f"x {layout.workers} workers); each epoch uses {used:.0%} of the samples (equal batch counts on "
            f"every rank). Fix: {fix_shards}"
        )
