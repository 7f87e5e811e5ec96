"""Taking and releasing a run folder's lock on object storage while the store is out (the loopback S3 server behind
the fault proxy): a refusal and a restart (404s for everything) of a couple of seconds are ridden out and logged
once at start and end; a refusal longer than checkpoint.outage_window_s is one line and exit code 2 through the
entry point, and leaves nothing held. The same through a whole killed-and-restarted run: benchmarks/fault_soak.sh
(docs/reliability.md)."""

import os

import pytest

from ect_scale.data.storage import StorageOptions, filesystem
from ect_scale.runtime import entry
from ect_scale.runtime.lock import FolderLock
from tests.runtime.store_proxy import StoreProxy

pytestmark = pytest.mark.slow  # Store outages of seconds.


def _lock(folder: str, proxy: StoreProxy, window_s: float) -> FolderLock:
    options = StorageOptions(endpoint_url=proxy.endpoint, connect_timeout_s=1, read_timeout_s=1, retries=1)
    return FolderLock(folder, fs=filesystem(folder, options)[0], outage_window_s=window_s)


def _messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_the_lock_is_taken_and_released_through_a_refusal_and_a_restart(s3_bucket, proxy, caplog):
    lock = _lock(f"{s3_bucket}/ckpts", proxy, window_s=30)
    proxy.out_for("refuse", 2.0)
    assert lock.acquire() is None  # The folder was free: taken once the store is back.
    record = lock.read()
    assert record["pid"] == os.getpid() and not record["released"]
    proxy.out_for("404", 1.5)  # A restart: the record reads as missing, and its write answers 404 too.
    again = _lock(f"{s3_bucket}/other", proxy, window_s=30)
    assert again.acquire() is None and again.read()["token"] == again.record["token"]
    proxy.out_for("refuse", 1.5)
    lock.release()
    assert lock.read()["released"]
    again.release()
    starts, ends = _messages(caplog, "the store is not answering"), _messages(caplog, "the store is back after")
    assert len(starts) == len(ends) == 3 and lock.clock.count() == 2 and lock.clock.lost_sec() > 2.5
    assert "ckpts/LOCK: the store is not answering (cannot connect); retrying for up to 30 s " in starts[0]
    assert "(checkpoint.outage_window_s)" in starts[0]
    assert "/other/LOCK while writing it: the store is restarting?)" in starts[1]


def test_a_store_out_for_longer_than_the_window_is_one_line_and_exit_2(s3_bucket, proxy, capsys):
    folder = f"{s3_bucket}/ckpts"
    lock = _lock(folder, proxy, window_s=2)
    proxy.set_mode("refuse")

    def body() -> int:
        lock.acquire()
        return 0

    assert entry.run(body, program="test") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: taking the lock {folder}/LOCK: the store has not answered for ")
    assert "(cannot connect: EndpointConnectionError: " in err and "longer than checkpoint.outage_window_s=2 s" in err
    assert "Fix: check that the store is up and reachable from this node" in err
    assert "Traceback" not in err and err.splitlines()[1].startswith("  (full log: ")  # One line, then the log's path.
    proxy.set_mode("pass")  # Nothing held: the next start takes the folder once the store is back.
    assert lock.record is None and lock.acquire() is None
    lock.release()
