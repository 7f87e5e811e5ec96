"""Shard reads during store outages, on the loopback S3 server behind a proxy that refuses, answers 404 as a
restarting store does: the stream waits, logs the outage once per rank when it starts and once when
it ends, counts its seconds, and yields exactly the batches an undisturbed stream yields. A shard that is really
missing (the store answers the manifest) is still skipped and counted; an outage longer than data.outage_window_s
stops the stream with one line, also when a DataLoader worker meets it."""

import logging
import threading

import pytest

from ect_scale.config import DataConfig
from ect_scale.data import build_train_stream
from ect_scale.runtime.outage import StoreOutageError
from tests.data.conftest import ids_of
from tests.runtime.store_proxy import StoreProxy

pytestmark = pytest.mark.slow  # Store outages of seconds.

KW = {"batch_gpu": 4, "rank": 0, "world_size": 1, "seed": 5}


def _cfg(url: str, proxy: StoreProxy, **kw) -> DataConfig:
    return DataConfig(
        **{
            "url": url,
            "num_workers": 0,
            "shuffle_buffer": 8,
            "endpoint_url": proxy.endpoint,
            "connect_timeout_s": 1,
            "read_timeout_s": 2,
            "retries": 1,  # No retries inside s3fs/botocore: the stream sees the outage at its first request.
            **kw,
        }
    )


def _take(cfg: DataConfig, n: int, proxy=None, mode: str = "pass", at: int = 0, lasting_s: float = 0.0):
    """`n` batches' ids; before batch `at`, switch the proxy to `mode` for `lasting_s` seconds."""
    with build_train_stream(cfg, **KW) as stream:
        out = []
        for i in range(n):
            if proxy is not None and i == at and mode != "pass":
                proxy.set_mode(mode)
                threading.Timer(lasting_s, proxy.set_mode, ("pass",)).start()
            out.append(ids_of(next(stream)[0]))
        return out, stream.counters()


@pytest.fixture(scope="module")
def reference(id_shards, s3_server):
    """The undisturbed batches (the proxy only forwards)."""
    proxy = StoreProxy(s3_server)
    try:
        return _take(_cfg(id_shards, proxy), 8)[0]
    finally:
        proxy.close()


@pytest.mark.parametrize("mode", ["refuse", "404"])  # 503: tests/runtime/test_outage.py classifies it alike.
def test_an_outage_is_ridden_out_and_the_batches_are_unchanged(id_shards, reference, proxy, mode, caplog):
    with caplog.at_level(logging.WARNING, logger="ect_scale.data"):
        batches, counters = _take(_cfg(id_shards, proxy), 8, proxy, mode, at=3, lasting_s=1.5)  # Opens shard 2.
    assert batches == reference
    assert counters["outages"] == 1 and 0.5 < counters["outage_sec"] < 30
    assert counters["corrupt_shards_skipped"] == 0
    lines = [r.getMessage() for r in caplog.records if "the store" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("data (rank 0): the store is not answering (")
    assert "retrying for up to 600 s (data.outage_window_s). Outage 1 of this run" in lines[0]
    assert lines[1].startswith("data (rank 0): the store is back after ")
    if mode == "404":
        assert "(404 for s3://" in lines[0] and "manifest.json, which exists: the store is restarting?)" in lines[0]


def test_a_missing_shard_is_skipped_not_waited_for(fresh_id_shards, proxy, s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    fs.rm(fresh_id_shards.removeprefix("s3://") + "/shard-000003.tar")
    _, counters = _take(_cfg(fresh_id_shards, proxy), 40)  # More than an epoch: every shard is opened.
    assert counters["corrupt_shards_skipped"] >= 1 and counters["outages"] == 0


def test_past_the_window_a_worker_stops_the_stream_with_one_line(id_shards, proxy):
    cfg = _cfg(id_shards, proxy, num_workers=1, outage_window_s=1.0)
    with pytest.raises(StoreOutageError) as info:
        _take(cfg, 8, proxy, "refuse", at=0, lasting_s=30)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"reading {id_shards}/shard-")
    assert "longer than data.outage_window_s=1 s. Fix: check that the store is up" in text
    assert "resumes from the latest complete checkpoint" in text
    assert info.value.__notes__[0].startswith("Raised in DataLoader worker 0 of rank 0:\nTraceback")
