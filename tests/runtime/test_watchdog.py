"""The hang watchdog: steady progress never trips it; a section that lasts too long is reported with the rank, the
section and every thread's stack in the run's log, including a read stuck on a stalled store (a real one: the
loopback S3 server behind a proxy that stops answering). The full path (two ranks, the exit code, the other rank's
stacks) is tested in tests/launchers/test_faults.py."""

import time

import pytest

from ect_scale.runtime.watchdog import HangError, Watchdog


def _wait_for(got: list, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)


def test_progress_keeps_it_quiet_and_a_stall_is_reported(tmp_path):
    got = []
    watchdog = Watchdog(0.3, rank=3, log_dir=str(tmp_path), on_hang=lambda e, p: got.append((e, p)), poll_s=0.02)
    time.sleep(0.4)  # Not watching yet (the run is being built).
    watchdog.start()
    for _ in range(10):  # 0.5 s of steps, each well within the timeout.
        watchdog.at("step")
        time.sleep(0.05)
    assert got == []
    watchdog.at("checkpoint")
    _wait_for(got, 5)
    watchdog.stop()
    error, path = got[0]
    assert isinstance(error, HangError) and "\n" not in str(error)
    assert str(error).startswith("no progress for 0 s in section 'checkpoint' on rank 3 (train.hang_timeout_s=0.3)")
    assert path == str(tmp_path / "hang-rank3.log") and f"every thread's stack is in {path}" in str(error)
    stacks = open(path).read()
    assert "rank 3" in stacks and "section 'checkpoint'" in stacks and "_wait_for" in stacks


@pytest.mark.slow  # The loopback S3 server and a shard read.
def test_a_read_stuck_on_a_stalled_store_is_caught_in_section_data(tmp_path, s3_server, s3_bucket):
    from ect_scale.config import DataConfig
    from ect_scale.data import build_train_stream
    from tests.data.conftest import write_id_shards
    from tests.runtime.store_proxy import StoreProxy

    write_id_shards(f"{s3_bucket}/ids")
    proxy = StoreProxy(s3_server)
    cfg = DataConfig(
        url=f"{s3_bucket}/ids", num_workers=0, shuffle_buffer=0, endpoint_url=proxy.endpoint, read_timeout_s=120
    )
    got = []

    def on_hang(error, path):  # Report, then let the store answer again so that the read can finish.
        got.append((error, open(path).read()))
        proxy.set_mode("pass")

    stream = build_train_stream(cfg, batch_gpu=4, rank=0, world_size=1, seed=0)
    try:
        for _ in range(3):  # The first shard (12 samples): the next batch opens another one.
            next(stream)
        proxy.set_mode("stall")
        watchdog = Watchdog(1.0, rank=0, log_dir=str(tmp_path), on_hang=on_hang, poll_s=0.1)
        watchdog.start()
        watchdog.at("data")
        raw, _ = next(stream)  # Blocks in the read until on_hang lets the store answer.
        watchdog.stop()
    finally:
        stream.close()
        proxy.close()
    assert raw.shape[0] == 4 and len(got) == 1
    error, stacks = got[0]
    assert "in section 'data' on rank 0" in str(error)
    assert "ect_scale/data/storage.py" in stacks and "readinto" in stacks  # Where it waited: the shard read.


def test_a_rank_stuck_in_a_read_reports_before_ranks_waiting_for_it_in_a_collective():
    from ect_scale.runtime.watchdog import blame_order

    # Rank 0 entered the step's collective 1 s before rank 1 got stuck in its read: rank 1 is the cause.
    assert blame_order("data", 101.0) < blame_order("step", 100.0)
    assert blame_order("step", 100.0) < blame_order("checkpoint", 101.0)  # Otherwise the first to stop.
