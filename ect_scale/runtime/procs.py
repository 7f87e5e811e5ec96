"""Processes that die with the process that started them, SIGKILL included.

A DataLoader worker started through a forkserver and the forkserver itself hold pipes that keep each other, and
multiprocessing's resource tracker, alive: after the training process is killed with SIGKILL (the out-of-memory
killer, a hard preemption) they were re-parented to PID 1 and lived on indefinitely, holding memory and file
handles. `exit_with_parent()` makes the calling process exit as soon as its parent is gone:

  * Linux: `prctl(PR_SET_PDEATHSIG, SIGKILL)`. The kernel sends it when the parent *thread* that created this
    process exits, so use it only where that thread lives as long as the parent process (`pdeathsig=True`);
  * everywhere: a daemon thread polls `os.getppid()` and exits once this process has been re-parented.

The resource tracker needs nothing: it exits by itself once the last process holding its pipe is gone.

Ranks of the `deepspeed` launcher also watch their grandparent (`grandparent=True`): `deepspeed` starts
`deepspeed.launcher.launch`, which starts the ranks, and on one node nothing forwards the launcher's death (SIGTERM
or SIGKILL of the `deepspeed` PID) to `launch`, so everything trained on. A rank exits once its parent has been
re-parented, i.e. the launcher is gone; `launch` then sees a rank fail and ends the others.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import faulthandler
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Linux: ask the kernel to send `sig` to this process when its parent thread exits. False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def exit_with_parent(
    pdeathsig: bool = True,
    interval_s: float = 0.5,
    grandparent: bool = False,
    note: Optional[Callable[[str], None]] = None,
) -> None:
    """Exit (code 1, no clean-up) as soon as the parent process dies, or with `grandparent` as soon as the parent's
    parent does (the parent is re-parented); `note(what)` runs first. See the module docstring."""
    parent = os.getppid()
    grand = parent_of(parent) if grandparent else None
    if pdeathsig:
        set_parent_death_signal()
    if os.getppid() != parent:  # The parent died before the signal was armed.
        os._exit(1)
    args = (parent, grand, interval_s, note)
    threading.Thread(target=_watch, args=args, name="ect-parent-watch", daemon=True).start()


def proc_stat(pid: int, thread: Optional[int] = None) -> list[str]:
    """Linux /proc/<pid>/stat (or a thread's) after the command name: state, ppid, ..., starttime (proc(5), field
    22 at index 19). Raises OSError where there is no such process."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def has_exited(pid: int) -> bool:
    """Whether process `pid` is gone or has exited, also when its parent has not reaped it yet (a zombie: where
    PID 1 reaps no orphans, as in a container without an init, a killed process stays one). Its main thread turns
    Z before the others have exited, so every thread is checked."""
    try:
        if proc_stat(pid)[0] not in ("Z", "X"):
            return False
        return all(proc_stat(pid, int(t))[0] in ("Z", "X") for t in os.listdir(f"/proc/{pid}/task"))
    except (OSError, IndexError, ValueError):
        return True  # Gone while we looked.


def parent_of(pid: int) -> Optional[int]:
    """The parent PID of process `pid` (Linux /proc), or None if unknown."""
    try:
        return int(proc_stat(pid)[1])
    except (OSError, IndexError, ValueError):
        return None


def _watch(parent: int, grand: Optional[int], interval_s: float, note: Optional[Callable[[str], None]]) -> None:
    while True:
        time.sleep(interval_s)
        if os.getppid() != parent:
            what = f"its parent process {parent} is gone"
        elif grand is not None and parent_of(parent) not in (grand, None):
            what = f"its launcher (process {grand}, the parent of {parent}) is gone"
        else:
            continue
        try:
            if note is not None:
                note(what)
        finally:
            os._exit(1)


def started_by_launcher() -> bool:
    """Whether this process is a rank started by the deepspeed launcher or torchrun (which set these variables)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "CROSS_RANK" in os.environ


def started_by_deepspeed() -> bool:
    """Whether this process is a rank started by `deepspeed.launcher.launch` (the `deepspeed` command)."""
    return "CROSS_RANK" in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ


# A process still alive this long after its work ended prints every thread's stack; 0 turns it off (the tests do:
# they call entry points in-process and go on running).
EXIT_WATCHDOG_S = float(os.environ.get("ECT_SCALE_EXIT_WATCHDOG_S", "120"))


def _stderr_with_fd():
    """sys.stderr if it is backed by a file descriptor (faulthandler writes to one), else the process's original
    stderr; None if neither is (then no stacks are printed)."""
    for f in (sys.stderr, sys.__stderr__):
        try:
            if f is not None:
                f.fileno()
                return f
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError.
            continue
    return None


def enable_stack_dumps() -> None:
    """`kill -USR2 <pid>` prints every thread's stack (SIGUSR1 is the trainer's preemption signal)."""
    out = _stderr_with_fd()
    if out is not None and hasattr(signal, "SIGUSR2") and threading.current_thread() is threading.main_thread():
        faulthandler.register(signal.SIGUSR2, file=out, all_threads=True)


def arm_exit_watchdog(timeout_s: Optional[float] = None) -> None:
    """From now on, if this process is still alive after `timeout_s` (default `EXIT_WATCHDOG_S`, from the
    environment variable ECT_SCALE_EXIT_WATCHDOG_S; 0 = off), print every thread's stack to stderr (once; the process
    goes on). Called when the work is done, so that a shutdown that hangs shows where. Re-arming restarts the clock."""
    timeout_s = EXIT_WATCHDOG_S if timeout_s is None else timeout_s
    out = _stderr_with_fd()
    if out is not None and timeout_s > 0:
        faulthandler.dump_traceback_later(timeout_s, repeat=False, file=out, exit=False)
