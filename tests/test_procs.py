"""A process that called `exit_with_parent` exits within seconds of its parent's death, SIGKILL included."""

import os
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
GRANDCHILD = "import sys, time; sys.path.insert(0, {repo!r}); from ect_scale.procs import exit_with_parent; " \
             "exit_with_parent(pdeathsig={pdeathsig}); time.sleep(600)"


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
