"""One owner per run folder: a live holder (another process on this host, a fresh lease from another host, on local
disk and on object storage) refuses with one line naming it; a dead one (its process killed, its lease stale) is
taken over and reported; a taken-over lease stops its old holder; a refused start leaves config.yaml alone."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ect_scale.runtime.lock import FolderBusyError, FolderLock
from ect_scale.runtime.rundir import RunFolder
from tests.conftest import REPO

HOLD = (
    "import sys, time; from ect_scale.runtime.lock import FolderLock; FolderLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); time.sleep(600)"
)


def _foreign(renewed_ago: float) -> dict:
    now = time.time()
    return {"host": "node-elsewhere", "pid": 4242, "started": now - 3600, "renewed": now - renewed_ago, "token": "t"}


def test_a_live_process_holds_the_folder_until_it_is_killed(tmp_path):
    folder = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, folder], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError) as info:
            FolderLock(folder).acquire()
        text = str(info.value)
        assert "\n" not in text and f"{folder} is in use by another run (host " in text
        assert f"pid {holder.pid}, started " in text and "Fix: wait for that run to end or stop it" in text
        holder.send_signal(signal.SIGKILL)
        _wait_until_exited(holder.pid)  # Not reaped: a zombie, as a killed run stays where PID 1 reaps no orphans.
        lock = FolderLock(folder)
        dead = lock.acquire()  # The kernel released the flock; the record names a process that has exited.
        assert dead is not None and dead["pid"] == holder.pid
        holder.wait()
        lock.release()
        assert json.load(open(os.path.join(folder, "LOCK")))["released"] is True
        again = FolderLock(folder)
        assert again.acquire() is None  # Released cleanly: nothing to take over.
        again.release()
    finally:
        if holder.poll() is None:
            holder.kill()


def _wait_until_exited(pid: int, timeout_s: float = 30) -> None:
    """Until every thread of `pid` has exited (the process is a zombie, not yet reaped by its parent, this test)."""
    deadline = time.time() + timeout_s
    task = f"/proc/{pid}/task"
    while not all(open(f"{task}/{t}/stat").read().rsplit(")", 1)[1].split()[0] == "Z" for t in os.listdir(task)):
        assert time.time() < deadline, f"process {pid} did not exit"
        time.sleep(0.01)


def _put_record(folder: str, record: dict) -> None:
    """Write a lock record as another run would (local file or object)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(folder.rstrip("/") + "/LOCK")
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.invalidate_cache()
    fs.pipe_file(path, json.dumps(record).encode())


@pytest.mark.slow  # The loopback S3 server.
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_holder_on_another_host_counts_until_its_lease_is_stale(where, tmp_path, s3_bucket):
    folder = str(tmp_path / "run") if where == "local" else f"{s3_bucket}/run/checkpoints"
    lock = FolderLock(folder, stale_s=60)
    _put_record(folder, _foreign(renewed_ago=5))
    with pytest.raises(FolderBusyError, match="in use by another run \\(host node-elsewhere, pid 4242"):
        lock.acquire()
    _put_record(folder, _foreign(renewed_ago=120))
    dead = lock.acquire()
    assert dead is not None and dead["host"] == "node-elsewhere"
    assert lock.read()["pid"] == os.getpid()
    lock.release()


@pytest.mark.slow  # The loopback S3 server.
def test_a_run_whose_lease_was_taken_over_learns_it(s3_bucket):
    lost = []
    lock = FolderLock(f"{s3_bucket}/ckpts", stale_s=0.4, on_lost=lost.append)
    lock.acquire()
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        # Another run took the folder (this one looked dead to it) and renews it. A renewal of this run that read
        # the record just before may write it back once; then the other run's next renewal notices (one stops).
        _put_record(f"{s3_bucket}/ckpts", _foreign(renewed_ago=0))
        time.sleep(0.1)
    assert lost and "was taken over by another run (host node-elsewhere" in lost[0]
    lock.release()
    assert lock.read()["host"] == "node-elsewhere"  # Releasing never overwrites the new holder's record.


def test_a_refused_start_changes_no_config_and_a_started_one_keeps_history(tmp_path):
    run_dir = str(tmp_path / "run")
    first = RunFolder(run_dir)
    assert first.acquire() == []
    first.record_config("seed: 0\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, run_dir], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        first.release()
        assert holder.stdout.readline().strip() == "held"
        second = RunFolder(run_dir)
        with pytest.raises(FolderBusyError):
            second.acquire()
        assert open(os.path.join(run_dir, "config.yaml")).read() == "seed: 0\n"
        assert len(os.listdir(os.path.join(run_dir, "configs"))) == 1
    finally:
        holder.kill()
        holder.wait()
    third = RunFolder(run_dir)
    notes = third.acquire()
    assert len(notes) == 1 and notes[0].startswith(f"run folder: took over {run_dir} from a run that is no longer")
    third.record_config("seed: 1\n")
    history = sorted(os.listdir(os.path.join(run_dir, "configs")))
    assert len(history) == 2 and all(h.startswith("config-") and h.endswith(".yaml") for h in history)
    assert open(os.path.join(run_dir, "config.yaml")).read() == "seed: 1\n"
    third.mark_done({"nimg": 8})
    assert json.load(open(os.path.join(run_dir, "DONE")))["nimg"] == 8
    third.clear_done()
    assert not os.path.exists(os.path.join(run_dir, "DONE"))
    third.release()


@pytest.mark.slow  # botocore's connection attempts.
def test_an_unreachable_store_is_one_line_when_taking_its_lock(monkeypatch):
    from ect_scale.data.storage import StorageOptions, filesystem
    from ect_scale.runtime.errors import UserError
    from tests.distributed import free_port

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    nowhere = StorageOptions(endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout_s=1, retries=1)
    with pytest.raises(UserError) as info:
        FolderLock("s3://bucket/run", fs=filesystem("s3://bucket/run", nowhere)[0]).acquire()
    text = str(info.value)  # No outage window (0 s): one attempt. Riding outages out: test_lock_outages.py.
    assert text.startswith("taking the lock s3://bucket/run/LOCK: the store has not answered for ") and "\n" not in text
    assert "(cannot connect: EndpointConnectionError: " in text and "checkpoint.outage_window_s=0 s" in text
    assert "Fix: check that the store is up and reachable from this node" in text
