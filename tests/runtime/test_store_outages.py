"""Checkpoint I/O on object storage during store outages (the loopback S3 server behind the fault proxy): uploads,
listings and marker checks wait through a refusal, a stall and a restart that answers 404 for everything (the
folder's LOCK, which exists, says the store is not telling the truth). A store out for longer than
checkpoint.outage_window_s during a run's save: tests/runtime/test_run_outages.py."""

import os
import time

import pytest

from ect_scale.checkpoint.storage import Destination
from ect_scale.data.storage import StorageOptions
from ect_scale.runtime.lock import FolderLock
from tests.runtime.store_proxy import StoreProxy

pytestmark = pytest.mark.slow  # Store outages of seconds.


def _destination(bucket: str, proxy: StoreProxy, window_s: float) -> Destination:
    lock = FolderLock(f"{bucket}/ckpts")  # A run locks its checkpoint folder before any checkpoint I/O.
    lock.acquire()
    lock.release()
    options = StorageOptions(endpoint_url=proxy.endpoint, connect_timeout_s=1, read_timeout_s=1, retries=1)
    return Destination(f"{bucket}/ckpts", window_s, options)


def test_checkpoint_io_waits_through_refusal_stall_and_restart(s3_bucket, proxy, tmp_path, caplog):
    dest = _destination(s3_bucket, proxy, window_s=60)
    assert dest.canary is not None
    blob = tmp_path / "shard.bin"
    blob.write_bytes(os.urandom(1 << 20))
    tag = "ckpt-000000000008"
    for i, mode in enumerate(("refuse", "404")):
        proxy.out_for(mode, 1.5)
        dest.upload(str(blob), tag, f"part-{i}")  # Checks the stored size too.
    proxy.out_for("stall", 2.5)  # The read timeout (1 s) ends each stalled request.
    dest.write_text_atomic("{}", tag, "COMPLETE")
    proxy.out_for("404", 1.5)
    assert dest.tags() == [tag]  # Not [] (a fresh start) while the store restarts.
    proxy.out_for("404", 1.5)
    assert dest.is_complete(tag)  # Not "incomplete" (skipped at resume, deleted by retention).
    assert dest.sizes(tag) == {"part-0": 1 << 20, "part-1": 1 << 20, "COMPLETE": 2}
    starts = [r.getMessage() for r in caplog.records if "the store is not answering" in r.getMessage()]
    ends = [r.getMessage() for r in caplog.records if "the store is back after" in r.getMessage()]
    # One line at the start and one at the end of each outage; s3fs's own retry may absorb a short stall.
    assert 4 <= dest.clock.count() == len(starts) == len(ends) <= 5 and dest.clock.lost_sec() > 2
    assert "(cannot connect); retrying for up to 60 s (checkpoint.outage_window_s)" in starts[0]
    assert "/ckpts/LOCK too, which exists: the store is restarting?)" in starts[-1]
    assert not dest.exists(tag, "never-written")  # A real 404 (the LOCK answers) is believed at once.


def test_a_404_is_not_believed_when_the_restart_ends_before_the_lock_is_asked(s3_bucket, proxy, tmp_path):
    """The restart ends between the failed request and the lock record's check (one 404, then the store is back;
    this race once failed the test above on a loaded CI machine). A PUT never meets a missing key, so a write is
    retried as in an outage; a lookup is asked once more before its "not found" is believed."""
    dest = _destination(s3_bucket, proxy, window_s=30)
    blob = tmp_path / "shard.bin"
    blob.write_bytes(os.urandom(1 << 16))
    tag = "ckpt-000000000016"
    proxy.answer_next("404", 1)
    dest.upload(str(blob), tag, "part-0")
    proxy.answer_next("404", 1)
    dest.write_text_atomic("{}", tag, "COMPLETE")
    assert proxy.requests == 2 and dest.clock.count() == 2
    lookups = {
        "size": (lambda: dest.size(tag, "part-0"), 1 << 16),
        "sizes": (lambda: dest.sizes(tag), {"part-0": 1 << 16, "COMPLETE": 2}),
        "tags": (dest.tags, [tag]),
        "is_complete": (lambda: dest.is_complete(tag), True),
    }
    for name, (lookup, want) in lookups.items():
        proxy.answer_next("404", 1)
        assert lookup() == want, name
    assert proxy.requests == 2 + len(lookups)
    # The listing and the lock record (a HEAD, then a LIST for a folder of that name) answer 404: an outage starts.
    # The listing once more, then the restart ends before the lock is asked again. The outage ended there (counted
    # once, not still running into the next one).
    proxy.answer_next("404", 4)
    assert dest.tags() == [tag] and proxy.requests == 2 + len(lookups) + 4
    lost = dest.clock.lost_sec()
    time.sleep(0.05)
    assert dest.clock.count() == 3 and dest.clock.lost_sec() == lost
    proxy.answer_next("404", 2)
    assert dest.tags() == [tag] and dest.clock.count() == 4
