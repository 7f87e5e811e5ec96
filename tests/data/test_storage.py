"""Object-storage layer: retrying reads that survive a server outage, endpoint precedence, atomic writes."""

import os
import threading
import time

import pytest

from ect_scale.data import storage
from ect_scale.data.storage import RetryingReader, StorageOptions, read_bytes, write_bytes
from tests.distributed import free_port


def test_retrying_reader_reopens_at_the_offset_after_an_outage(s3_server):
    """Stop a real S3 server mid-read and bring it back: the read resumes at its byte offset."""
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir("outage-test")
    data = os.urandom(1 << 20)
    fs.pipe_file("outage-test/blob.bin", data)
    options = StorageOptions(
        endpoint_url=endpoint, connect_timeout_s=1, read_timeout_s=2, retries=8, block_size=64 << 10
    )
    reader = RetryingReader("s3://outage-test/blob.bin", options)
    head = reader.read(100_000)
    server.stop()  # Outage: moto keeps its data in-process, so a new server on the same port serves the same object.
    restarted = []
    threading.Thread(
        target=lambda: (
            time.sleep(3.0),
            restarted.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)),
            restarted[0].start(),
        )
    ).start()
    before = storage.COUNTERS["read_retries"]
    try:
        tail = reader.read()
    finally:
        time.sleep(0.1)
        for s in restarted:
            s.stop()
    assert head + tail == data
    assert storage.COUNTERS["read_retries"] > before


def test_endpoint_precedence(monkeypatch):
    for name in ("FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert StorageOptions().s3_endpoint() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-generic")
    assert StorageOptions().s3_endpoint() == "http://aws-generic"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://aws-s3")
    assert StorageOptions().s3_endpoint() == "http://aws-s3"
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", "http://fsspec")
    assert StorageOptions().s3_endpoint() == "http://fsspec"
    assert StorageOptions(endpoint_url="http://explicit").resolved().endpoint_url == "http://explicit"
    assert StorageOptions().resolved().endpoint_url == "http://fsspec"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_write_bytes_is_atomic_and_leaves_no_temporary_keys(where, tmp_path, s3_bucket):
    base = str(tmp_path / "out") if where == "local" else f"{s3_bucket}/out"
    url = storage.join(base, "sub/thing.json")
    write_bytes(url, b"first")
    write_bytes(url, b"second")
    assert read_bytes(url) == b"second"
    fs, path = storage.filesystem(url)
    fs.invalidate_cache()
    assert [os.path.basename(p) for p in fs.ls(path.rsplit("/", 1)[0], detail=False)] == ["thing.json"]
