"""A gate for benchmark processes that share one GPU: they warm up (compile) together, then time one at a time."""

from __future__ import annotations

import fcntl
import os
import time

from ect_scale.runtime import dist


class TimingGate:
    """Lets several benchmark processes on one GPU warm up (compile) together, then time one at a time.

    Entering waits until `count` processes have announced themselves ready in `folder` (or `timeout_s` passed),
    then takes an exclusive file lock for the timed section. Rank 0 of each job takes part; other ranks follow
    through the job's own barrier. A job that dies before it is ready should still be counted: the script that
    starts it touches `ready.<name>` when it exits (see benchmarks/env.sh, `gated`), under the same `name`."""

    def __init__(self, folder: str, count: int, timeout_s: float = 900.0, name: str = ""):
        self.folder, self.count, self.timeout_s = folder, count, timeout_s
        self.name = name
        self.waited_sec, self.timed_out, self._lock = 0.0, False, None

    def __enter__(self):
        if dist.get_rank() == 0:
            os.makedirs(self.folder, exist_ok=True)
            open(os.path.join(self.folder, f"ready.{self.name or os.getpid()}"), "w").close()
            t0 = time.time()
            while len([f for f in os.listdir(self.folder) if f.startswith("ready.")]) < self.count:
                if time.time() - t0 > self.timeout_s:
                    self.timed_out = True
                    break
                time.sleep(0.5)
            self._lock = open(os.path.join(self.folder, "lock"), "w")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            self.waited_sec = time.time() - t0
        dist.barrier()
        return self

    def __exit__(self, *exc):
        dist.barrier()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
        return False
