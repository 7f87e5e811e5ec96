"""Faults through the real command: a hung rank (a read that never returns on rank 1, so rank 0 waits in the step's
collective) is caught by the watchdog, reported once with the rank and the section, every rank's stacks land in
the run's logs and the ranks exit non-zero (3 for the hung one), so that a scheduler requeues the job. Killing the
`deepspeed` command and two runs on one folder: tests/launchers/test_processes.py."""

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.distributed import free_port
from tests.launchers.common import ENV, SYNTHETIC, TEACHER, error_lines

pytestmark = pytest.mark.slow  # Two training processes.


def test_a_stuck_read_and_the_collective_waiting_for_it_are_caught(tmp_path):
    port = free_port()
    cmd = (
        [sys.executable, "tests/launchers/inject.py", "1", "stuck-read", "-1", "--"]
        + TEACHER[2:]
        + SYNTHETIC
        + [
            f"--run_dir={tmp_path}/run",
            "--checkpoint.enabled=false",
            "--train.total_nimg=100000",
            "--train.hang_timeout_s=4",
            "--data.outage_window_s=1",
            "--checkpoint.outage_window_s=1",
        ]
    )
    envs = [
        dict(ENV, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        for r in range(2)
    ]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for env in envs
    ]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    assert codes == [2, 3], (codes, outs[0][1][-2000:], outs[1][1][-2000:])  # Rank 0 stopped by rank 1's report.
    lines = error_lines(outs[0][0] + outs[0][1] + outs[1][0] + outs[1][1])
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error (rank 1): no progress for ") and "in section 'data' on rank 1" in line
    assert "(train.hang_timeout_s=4); rank 0 in 'step' for " in line
    assert f"every thread's stack is in {tmp_path}/run/logs/hang-rank1.log. Fix: see the stacks" in line
    assert "Traceback" not in outs[1][1]
    hung = (tmp_path / "run" / "logs" / "hang-rank1.log").read_text()
    assert "section 'data'" in hung and "stuck_after" in hung  # Where rank 1 waits: the read.
    waiting = (tmp_path / "run" / "logs" / "error-rank0.log").read_text()
    assert "stopping this rank because rank 1 failed: no progress for" in waiting
    assert "all_reduce" in waiting and "train_step" in waiting  # Where rank 0 waits: the step's collective.
