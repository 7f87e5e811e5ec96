"""Processes of a run end with it, and runs do not collide: a 2-rank `deepspeed` run on shards with DataLoader workers
is killed (its ranks or its launch process with SIGKILL, or the `deepspeed` command with a plain `kill`) and no
process of it may survive 10 s; a second run started in the folder of a live one is refused with one line naming it
and changes nothing there; when the launch process is SIGKILLed, `deepspeed` exits 0 (a DeepSpeed bug) but the run
has no DONE marker, which `launchers/require_done.sh` turns into a failure; two single-process runs started at once
on one machine both finish (each binds its own free port)."""

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import REPO
from tests.distributed import free_port
from tests.launchers.common import BIN, ENV, SYNTHETIC, TEACHER, assert_one_line_error, make_digits, run

pytestmark = pytest.mark.slow


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{name}/cmdline") as f:
                    cmd = f.read().replace("\0", " ")
            except OSError:
                continue
            if fields[0] != "Z":
                out[int(name)] = (int(fields[1]), cmd)
    return out


def _tree(root: int) -> dict[int, str]:
    table, found = _table(), {root}
    while True:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        if not more:
            return {pid: table[pid][1] for pid in found if pid in table}
        found |= more


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    return make_digits(str(tmp_path_factory.mktemp("digits")))


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("victim", ["ranks", "launcher", "deepspeed"])
def test_nothing_outlives_a_killed_run(tmp_path, victim, digits):
    manifest = digits
    cmd = (
        [os.path.join(BIN, "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
        + TEACHER[1:]
        + [
            f"--data.url={manifest}",
            f"--run_dir={tmp_path}/run",
            "--train.total_nimg=10000000",
            "--train.status_nimg=64",
            "--logging.progress=plain",
            "--data.num_workers=1",
            "--checkpoint.enabled=false",
        ]
    )
    runner = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    pids: dict[int, str] = {}
    try:
        for line in runner.stdout:  # Train until the first status line: workers, forkservers, trackers all up.
            if line.startswith("kimg "):
                break
        pids = _tree(runner.pid)
        assert sum("multiprocessing.forkserver" in c for c in pids.values()) >= 2, pids
        assert sum("resource_tracker" in c for c in pids.values()) >= 2, pids
        if victim == "deepspeed":
            rank0 = next(pid for pid, c in pids.items() if "launchers/train.py" in c and "--local_rank=0" in c)
            _second_run_is_refused(tmp_path / "run", rank0)
        if victim == "ranks":
            targets = [pid for pid, c in pids.items() if "launchers/train.py" in c and "--local_rank" in c]
        elif victim == "launcher":
            targets = [pid for pid, c in pids.items() if "deepspeed.launcher.launch" in c]
        else:
            targets = [runner.pid]
        assert len(targets) == (2 if victim == "ranks" else 1), pids
        for pid in targets:
            os.kill(pid, signal.SIGTERM if victim == "deepspeed" else signal.SIGKILL)
        deadline = time.monotonic() + 10  # Everything is gone within 10 s.
        while True:
            alive = _table()
            survivors = {p: c for p, c in pids.items() if p in alive and alive[p][1] == c and p != runner.pid}
            if not survivors or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert survivors == {}, survivors
        if victim == "launcher":
            assert runner.wait(timeout=30) == 0  # DeepSpeed's bug: a killed launch process is a success to it ...
            assert not os.path.exists(tmp_path / "run" / "DONE")  # ... but the run never finished:
            check = subprocess.run(
                ["bash", "-c", f"source launchers/require_done.sh && require_done {tmp_path}/run"],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            assert check.returncode == 1 and check.stderr.startswith(f"error: the training run in {tmp_path}/run did")
    finally:
        for pid in [runner.pid, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        runner.wait(timeout=30)


def _second_run_is_refused(run_dir, holder: int) -> None:
    """Another run started in a live run's folder stops with one line naming the holder, and changes nothing."""
    config = (run_dir / "config.yaml").read_text()
    proc = run(TEACHER + SYNTHETIC + [f"--run_dir={run_dir}"])
    line = assert_one_line_error(proc, f"error: {run_dir} is in use by another run (host ")
    assert f", pid {holder}, started " in line and "Fix: wait for that run to end or stop it" in line
    assert (run_dir / "config.yaml").read_text() == config and len(os.listdir(run_dir / "configs")) == 1
    assert not (run_dir / "logs").exists() and "(full log:" not in proc.stderr  # Nothing written there.


def test_two_single_process_runs_at_once_both_finish(tmp_path):
    env = {k: v for k, v in ENV.items() if k not in ("MASTER_PORT", "MASTER_ADDR")}
    runs = [
        subprocess.Popen(
            TEACHER + SYNTHETIC + [f"--run_dir={tmp_path}/run{i}", "--checkpoint.enabled=false"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in runs]
    for p, (out, err) in zip(runs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
        assert "Finished: 128 images." in out
        assert "data       synthetic (pixels, 8px, 10 classes)" in out  # Not the recipe's data.url.
