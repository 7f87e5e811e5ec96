"""Which processes end with their launcher (stand-ins for the launchers, the real entry point): a rank of the deepspeed
launcher exits once the `deepspeed` command (its grandparent) is gone, even though its direct parent (`launch`)
lives on; a plain `python launchers/...` process is never tied to the shell that started it (nohup, setsid). The
real `deepspeed` command: tests/launchers/test_processes.py::test_nothing_outlives_a_killed_run[deepspeed]."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # Three Python processes per case.

RANK = (
    "import time; from ect_scale.runtime import entry; "
    "entry.run(lambda: (print('running', flush=True), time.sleep(120), 0)[-1], program='probe')"
)
# The middle process (like deepspeed's `launch`): starts the rank, reports its PID, and waits for it.
LAUNCH = (
    "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=subprocess.PIPE, "
    "text=True); print(p.pid, p.stdout.readline().strip(), flush=True); p.wait()"
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("launched_by", ["deepspeed", "shell"])  # The real deepspeed command: test_processes.py.
def test_a_rank_ends_with_the_deepspeed_command_and_a_plain_run_outlives_its_shell(launched_by):
    env = dict(os.environ, CROSS_RANK="0") if launched_by == "deepspeed" else dict(os.environ)
    env.pop("TORCHELASTIC_RUN_ID", None)
    if launched_by == "shell":
        env.pop("CROSS_RANK", None)
    # The top process (like the `deepspeed` command, or a shell): starts the middle one and relays its line.
    top = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {LAUNCH!r}, {RANK!r}])"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    rank = 0
    try:
        pid, state = top.stdout.readline().split()
        rank = int(pid)
        assert state == "running" and _alive(rank)
        top.send_signal(signal.SIGTERM)  # `kill <pid of deepspeed>` (or the shell going away).
        top.wait(timeout=10)
        deadline = time.monotonic() + 3  # The rank's watch looks every 0.5 s.
        while _alive(rank) and time.monotonic() < deadline:
            time.sleep(0.1)
        if launched_by == "deepspeed":
            assert not _alive(rank), "the rank outlived the deepspeed command by 3 s"
        else:
            assert _alive(rank), "a plain run died with the process that started it"
    finally:
        if rank and _alive(rank):
            os.kill(rank, signal.SIGKILL)
