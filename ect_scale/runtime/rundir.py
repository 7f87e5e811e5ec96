"""A run folder with one owner, a config history and a completion marker (rank 0's side; the trainer makes the
decisions collective).

    folder = RunFolder(run_dir, checkpoint_dir)  # checkpoint_dir: None when it is <run_dir>/checkpoints
    for note in folder.acquire(): print(note)    # FolderBusyError if another live run holds either folder
    folder.clear_done()                          # this start has not finished (yet)
    ...every check passed...
    folder.record_config(yaml_text)              # config.yaml + configs/config-<start time>.yaml
    ...training reached its end, final checkpoint complete...
    folder.mark_done({"nimg": ...})              # <run_dir>/DONE
    folder.release()

`DONE` exists only after a finished run: scripts that launch training check it, because the `deepspeed` launcher
exits 0 even when its launch process was killed (launchers/quickstart.sh). A start that is refused changes nothing:
the lock is taken before anything is written, and `config.yaml` is written only after every check has passed.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from typing import Callable, Optional

from ect_scale.runtime.lock import STALE_S, FolderLock, describe_holder

DONE = "DONE"
CONFIG = "config.yaml"
HISTORY = "configs"


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class RunFolder:
    def __init__(
        self,
        run_dir: str,
        checkpoint_dir: Optional[str] = None,
        stale_s: float = STALE_S,
        on_lost: Optional[Callable[[str], None]] = None,
        checkpoint_fs=None,
        outage_window_s: float = 0.0,
    ):
        """`checkpoint_dir`: a checkpoint folder outside `run_dir` (local, shared or object storage), locked too;
        `checkpoint_fs`: its fsspec filesystem (object storage); `outage_window_s`: how long taking its lock rides
        out a store outage (`checkpoint.outage_window_s`)."""
        self.run_dir = run_dir
        self.locks = [FolderLock(run_dir, stale_s, on_lost)]
        if checkpoint_dir is not None:
            self.locks.append(
                FolderLock(checkpoint_dir, stale_s, on_lost, fs=checkpoint_fs, outage_window_s=outage_window_s)
            )
        self.started = time.time()

    def acquire(self) -> list[str]:
        """Lock every folder (all or none); returns a note for each dead holder that was taken over."""
        notes, held = [], []
        try:
            for lock in self.locks:
                dead = lock.acquire()
                held.append(lock)
                if dead is not None:
                    notes.append(
                        f"run folder: took over {lock.folder} from a run that is no longer running "
                        f"({describe_holder(dead)})"
                    )
        except BaseException:
            for lock in held:
                lock.release()
            raise
        atexit.register(self.release)  # Also when the start fails later (a refused resume): the folder is free.
        return notes

    def release(self) -> None:
        atexit.unregister(self.release)
        for lock in reversed(self.locks):
            lock.release()

    def record_config(self, text: str) -> str:
        """Write `config.yaml` and keep a copy in `configs/config-<start time>.yaml`; returns the copy's path."""
        folder = os.path.join(self.run_dir, HISTORY)
        os.makedirs(folder, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        path = os.path.join(folder, f"config-{stamp}.yaml")
        n = 1
        while os.path.exists(path):  # Two starts within one second.
            n += 1
            path = os.path.join(folder, f"config-{stamp}-{n}.yaml")
        _write_atomic(path, text)
        _write_atomic(os.path.join(self.run_dir, CONFIG), text)
        return path

    def clear_done(self) -> None:
        try:
            os.remove(os.path.join(self.run_dir, DONE))
        except FileNotFoundError:
            pass

    def mark_done(self, info: dict) -> None:
        """The run reached its end: write `DONE` (JSON: what was done, when)."""
        record = {**info, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_atomic(os.path.join(self.run_dir, DONE), json.dumps(record, indent=1) + "\n")
