"""A process that called `exit_with_parent` exits within seconds of its parent's death, SIGKILL included."""

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO

CHILD = textwrap.dedent("""
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
    print(grandchild.pid, flush=True)
    time.sleep(600)
""")
GRANDCHILD = (
    "import sys, time; from ect_scale.runtime.procs import exit_with_parent; "
    "exit_with_parent(pdeathsig={pdeathsig}); time.sleep(600)"
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("pdeathsig", [True, False])
def test_the_child_exits_when_its_parent_is_killed(pdeathsig):
    code = GRANDCHILD.format(repo=REPO, pdeathsig=pdeathsig)
    parent = subprocess.Popen([sys.executable, "-c", CHILD, code], stdout=subprocess.PIPE, text=True)
    grandchild = int(parent.stdout.readline())
    try:
        time.sleep(1.0)  # Let it arm the signal and start its watch.
        assert _alive(grandchild)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(grandchild), "the orphan outlived its parent by 5 s"
    finally:
        for pid in (grandchild,):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


HANGS = (
    "import sys, threading, time; from ect_scale.runtime import procs; "
    "procs.enable_stack_dumps(); {arm}; threading.Event().wait({wait})"
)


def test_exit_watchdog_prints_where_a_finished_process_waits():
    code = HANGS.format(repo=str(REPO), arm="procs.arm_exit_watchdog(0.5)", wait=3)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0  # The watchdog only reports; the process goes on.
    assert "Timeout (0:00:00.500000)!" in res.stderr and "threading.py" in res.stderr, res.stderr


def test_sigusr2_prints_the_stacks_on_demand():
    code = HANGS.format(repo=str(REPO), arm="print('ready', flush=True)", wait=30)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    # Ask until a dump shows the main thread in its wait: the first signal may come before the wait has begun,
    # and a loaded machine may take seconds.
    err, deadline = "", time.time() + 20
    while "threading.py" not in err and time.time() < deadline:
        proc.send_signal(signal.SIGUSR2)
        if select.select([proc.stderr], [], [], 0.5)[0]:
            chunk = os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
            if not chunk:
                break
            err += chunk
    proc.kill()
    proc.communicate(timeout=30)
    assert "Current thread" in err and "threading.py" in err, err
