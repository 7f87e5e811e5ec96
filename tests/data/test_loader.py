"""The streaming loader against the loopback S3 server: exactly-once epochs, equal batch counts, exact resume,
corrupt-shard tolerance, and fast, clear failures."""

import logging
import socket
import time
from collections import Counter

import pytest
import s3fs
import torch

from ect_scale.config import DataConfig
from ect_scale.config.base import ConfigError
from ect_scale.data import LatentEncoder, StorageError, build_train_stream
from ect_scale.data.storage import clear_filesystem_cache
from tests.data.conftest import ids_of


def stream_cfg(url: str, **kw) -> DataConfig:
    return DataConfig(**{"url": url, "num_workers": 2, "shuffle_buffer": 8, "prefetch_factor": 2, **kw})


def take(stream, n: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for _ in range(n):
        raw, labels = next(stream)
        out.append((ids_of(raw), labels.tolist()))
    return out


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(id_shards):
    epochs = {0: Counter(), 1: Counter()}
    batch_counts, orders = [], []
    for rank in range(2):
        with build_train_stream(stream_cfg(id_shards), batch_gpu=4, rank=rank, world_size=2, seed=3) as stream:
            batch_counts.append(stream.batches_per_epoch)
            for epoch in range(2):
                batches = take(stream, stream.batches_per_epoch)
                assert stream.epoch == epoch + 1 and stream.batch_in_epoch == 0
                for ids, labels in batches:
                    assert len(ids) == 4 and labels == [i % 10 for i in ids]
                    epochs[epoch].update(ids)
                orders.append([i for ids, _ in batches for i in ids])
            assert stream.counters()["corrupt_shards_skipped"] == 0
    assert batch_counts == [24, 24]  # 192 samples / (2 ranks x batch 4)
    for epoch in range(2):
        assert sorted(epochs[epoch]) == list(range(192)) and set(epochs[epoch].values()) == {1}
    assert orders[0] != orders[1]  # Rank 0's epochs 0 and 1: reshuffled.


def test_resume_gives_exactly_the_uninterrupted_batches(id_shards, caplog):
    cfg = stream_cfg(id_shards)
    kw = {"batch_gpu": 4, "rank": 1, "world_size": 2, "seed": 11}
    with build_train_stream(cfg, **kw) as stream:
        reference = take(stream, 31)  # 24 batches per epoch: crosses an epoch boundary.
    with build_train_stream(cfg, **kw) as stream:
        assert take(stream, 7) == reference[:7]  # 7 is odd: the resumed loader must rotate worker roles.
        state = stream.state_dict()
    assert (state["epoch"], state["batch"]) == (0, 7)
    with caplog.at_level(logging.INFO, logger="ect_scale.data"):
        with build_train_stream(cfg, **kw) as stream:
            stream.load_state_dict(state)
            assert stream.resume_path == "exact"
            assert take(stream, 24) == reference[7:31]
    assert "exact resume at epoch 0, batch 7/24" in caplog.text


def test_resume_at_another_world_size_is_remapped_and_logged(id_shards, caplog):
    with build_train_stream(stream_cfg(id_shards), batch_gpu=4, rank=0, world_size=2, seed=0) as stream:
        state = {**stream.state_dict(), "epoch": 3, "batch": 12}  # Halfway through epoch 3 of 24 batches.
    with caplog.at_level(logging.WARNING, logger="ect_scale.data"):
        with build_train_stream(stream_cfg(id_shards), batch_gpu=4, rank=0, world_size=1, seed=0) as stream:
            stream.load_state_dict(state)
            assert stream.resume_path == "remapped"
            assert (stream.epoch, stream.batch_in_epoch) == (3, stream.batches_per_epoch // 2)
    assert "world_size 2 -> 1" in caplog.text and "not reproduced" in caplog.text


def test_corrupt_and_truncated_shards_are_skipped_and_counted(fresh_id_shards, s3_server):
    id_shards = fresh_id_shards
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    path = id_shards.removeprefix("s3://")
    blob = fs.cat_file(f"{path}/shard-000003.tar")
    fs.pipe_file(f"{path}/shard-000003.tar", blob[: len(blob) * 2 // 5])  # Truncated mid-sample.
    fs.pipe_file(f"{path}/shard-000009.tar", b"\x00garbage" * 100)  # Not a tar at all.
    cfg = stream_cfg(id_shards, num_workers=1)
    with build_train_stream(cfg, batch_gpu=4, rank=0, world_size=1, seed=5) as stream:
        batches = take(stream, stream.batches_per_epoch)  # The epoch length does not change...
        counters = stream.counters()
    assert len(batches) == 48
    assert counters["corrupt_shards_skipped"] == 2 and counters["refill_passes"] == 1  # ...short samples are refilled.
    seen = Counter(i for ids, _ in batches for i in ids)
    assert 0 < len(seen) < 192 and max(seen.values()) == 2  # Refilled samples appear twice in this epoch.


def test_unreachable_endpoint_fails_fast_with_the_fix(s3_bucket):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # Nothing listens here once the socket is closed.
    cfg = stream_cfg(f"{s3_bucket}/ids/manifest.json", endpoint_url=f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(StorageError, match="unreachable") as e:
        build_train_stream(cfg, batch_gpu=4, rank=0, world_size=1, seed=0)
    assert time.monotonic() - start < 10
    assert e.value.kind == "unreachable"
    assert f"{s3_bucket}/ids/manifest.json" in str(e.value) and f"127.0.0.1:{port}" in str(e.value)
    assert "Fix: check data.endpoint_url" in str(e.value)


def test_missing_credentials_and_missing_manifest_are_explained(s3_bucket, monkeypatch, request):
    with pytest.raises(StorageError, match="tools/make_shards.py") as e:
        build_train_stream(stream_cfg(f"{s3_bucket}/nothing-here"), batch_gpu=4, rank=0, world_size=1, seed=0)
    assert e.value.kind == "not-found"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    clear_filesystem_cache()  # Filesystems resolve credentials once per process...
    request.addfinalizer(clear_filesystem_cache)  # ...so drop the credential-less one afterwards.
    with pytest.raises(StorageError, match="no AWS credentials") as e:
        build_train_stream(stream_cfg(f"{s3_bucket}/ids"), batch_gpu=4, rank=0, world_size=1, seed=0)
    assert e.value.kind == "credentials" and ".deepspeed_env" in str(e.value)


def test_layout_errors_name_the_option(id_shards):
    with pytest.raises(ValueError, match="data.num_workers: 4 ranks x 8 workers = 32 readers"):
        build_train_stream(stream_cfg(id_shards, num_workers=8), batch_gpu=4, rank=0, world_size=4, seed=0)
    with pytest.raises(ValueError, match="train.batch_gpu: 64"):
        build_train_stream(stream_cfg(id_shards), batch_gpu=64, rank=0, world_size=2, seed=0)
    with pytest.raises(ConfigError, match="data.url: must name a manifest"):
        build_train_stream(
            stream_cfg(id_shards + "/shard-{000000..000015}.tar"), batch_gpu=4, rank=0, world_size=1, seed=0
        )


def test_synthetic_stream_matches_the_network_shape_and_resumes():
    cfg = DataConfig(kind="synthetic", synthetic_resolution=8, synthetic_label_dim=10)
    stream = build_train_stream(cfg, batch_gpu=16, rank=1, world_size=2, seed=0)
    first = [next(stream) for _ in range(3)]
    raw, labels = first[0]
    assert raw.shape == (16, 8, 8, 8) and raw.dtype.is_floating_point and labels.max() < 10
    assert isinstance(stream.encoder, LatentEncoder)
    x0 = stream.encoder.encode(raw)
    assert x0.shape == (16, 4, 8, 8) and 0.3 < x0.std() < 0.8  # About EDM2's sigma_data = 0.5.
    resumed = build_train_stream(cfg, batch_gpu=16, rank=1, world_size=2, seed=0)
    resumed.load_state_dict({"kind": "synthetic", "batch": 2})
    assert next(resumed)[0].equal(first[2][0])
    pixels = build_train_stream(
        DataConfig(kind="synthetic", synthetic_encoder="pixels", synthetic_resolution=8),
        batch_gpu=2,
        rank=0,
        world_size=1,
        seed=0,
    )
    assert next(pixels)[0].dtype == torch.uint8
