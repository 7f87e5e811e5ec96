"""Hang detection: a per-rank watchdog that notices when the run stops making progress, says where, and exits.

    watchdog = Watchdog(timeout_s=1800, rank=rank, log_dir="runs/x/logs")
    watchdog.start()           # the training loop begins (building and resuming before it are not watched)
    watchdog.at("data")        # progress: entering a section (the trainer: data, step, status, export, eval, ...)
    ...
    watchdog.stop()

A daemon thread checks every few seconds whether the current section has lasted longer than `timeout_s` (the loop
re-enters a section at every step, so a healthy run never gets close). When one has, the rank:

  1. writes every thread's Python stack to `<log_dir>/hang-rank<R>.log`, headed by the section and how long it lasted;
  2. compares notes with the other ranks through the rendezvous store: each hung rank publishes its section and when
     it entered it, and the likely cause reports, naming every hung rank's section: a rank stuck in a section without
     collectives (`data`: a read) before ranks waiting in a collective, else the rank that stopped first;
  3. reports like any failure (`entry.abort`): one line `error (rank R): no progress for ... in section "data" ...`,
     the other ranks stop within seconds (their logs get their own stacks), and the process exits with
     `HANG_EXIT_CODE` (3), so that a scheduler (launchers/slurm_train.sbatch) requeues the job.

Sections are coarse on purpose; a section that legitimately takes long (the first step, which may compile; an in-loop
evaluation; a save that rides out a store outage) must fit in `timeout_s` (`train.hang_timeout_s`, longer than the
outage windows). Building the run and resuming (before the loop) are not watched: they are bounded by the store's
outage windows and timeouts and by the process group's timeout. The stacks are the training process's; DataLoader
workers are separate processes.
"""

from __future__ import annotations

import faulthandler
import json
import os
import threading
import time
from typing import Callable, Optional

from ect_scale.runtime import dist, entry, peers
from ect_scale.runtime.errors import UserError

HANG_EXIT_CODE = 3
KEY = "ect_scale.hang.{rank}"  # A key of the rendezvous store, one per rank.
COMPARE_S = 3.0  # How long a hung rank waits for the other ranks' notes before deciding who reports.
# Sections that make no collective call: a rank stuck in one cannot be waiting for a peer, so it is the cause
# and reports, whatever the start times (ranks waiting in a collective for it may have stopped a moment earlier).
LOCAL_SECTIONS = ("data",)


def blame_order(section: str, since_wall: float) -> tuple[bool, float]:
    """Who reports a hang: the lowest of these (a local section first, then the rank that stopped first)."""
    return section not in LOCAL_SECTIONS, since_wall


class HangError(UserError):
    """A rank made no progress for longer than train.hang_timeout_s."""


class Watchdog:
    def __init__(
        self,
        timeout_s: float,
        rank: int,
        log_dir: str,
        on_hang: Optional[Callable[[HangError, str], None]] = None,
        poll_s: Optional[float] = None,
    ):
        """`on_hang(error, stacks_path)` replaces the report-and-exit (tests); `timeout_s` 0 turns the watchdog off."""
        self.timeout_s, self.rank, self.log_dir = timeout_s, rank, log_dir
        self.on_hang = on_hang
        self.section = "start"
        self.since = time.monotonic()
        self.since_wall = time.time()
        self.poll_s = poll_s if poll_s is not None else min(5.0, timeout_s / 10)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Watch from now on (no-op when off or already watching)."""
        if self.timeout_s > 0 and self._thread is None:
            self.at("start")
            self._thread = threading.Thread(target=self._watch, name="ect-hang-watchdog", daemon=True)
            self._thread.start()

    def at(self, section: str) -> None:
        """Progress: the rank enters `section` now."""
        self.section, self.since, self.since_wall = section, time.monotonic(), time.time()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ the watch
    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            section, since, since_wall = self.section, self.since, self.since_wall
            stalled = time.monotonic() - since
            if stalled > self.timeout_s and not self._stop.is_set():
                self._fire(section, stalled, since_wall)
                return

    def _fire(self, section: str, stalled: float, since_wall: float) -> None:
        path = self._dump(section, stalled)
        others = self._compare(section, since_wall)
        line = (
            f"no progress for {stalled:.0f} s in section {section!r} on rank {self.rank} (train.hang_timeout_s="
            f"{self.timeout_s:g}){others}; every thread's stack is in {path}"
        )
        error = HangError(
            line,
            "see the stacks for what it waited on (in 'step' or 'status' a collective waits for another rank; in "
            "'data' a read or the data workers). Re-run the same command to resume from the latest complete "
            "checkpoint; raise train.hang_timeout_s if that section legitimately takes longer",
        )
        if self.on_hang is not None:
            self.on_hang(error, path)
            return
        entry.abort(error, HANG_EXIT_CODE, f"hang detected; stacks in {path}\n")

    def _dump(self, section: str, stalled: float) -> str:
        os.makedirs(self.log_dir, exist_ok=True)
        path = os.path.join(self.log_dir, f"hang-rank{self.rank}.log")
        with open(path, "a") as f:
            f.write(
                f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} rank {self.rank} pid {os.getpid()}: no progress for "
                f"{stalled:.0f} s in section {section!r} (train.hang_timeout_s={self.timeout_s:g})\n"
            )
            f.flush()
            faulthandler.dump_traceback(f, all_threads=True)
        return path

    def _compare(self, section: str, since_wall: float) -> str:
        """Publish this rank's note, read the others'; if another hung rank is more likely the cause (`blame_order`),
        let it report (this rank is stopped by the peer watch when it does). Returns the other ranks' sections for
        the message."""
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world < 2 or not peers.publish(KEY.format(rank=self.rank), json.dumps([section, since_wall])):
            return ""
        deadline = time.monotonic() + COMPARE_S
        notes: dict[int, tuple[str, float]] = {}
        while True:
            for r in range(world):
                raw = peers.lookup(KEY.format(rank=r)) if r != self.rank and r not in notes else None
                if raw is not None:
                    name, t = json.loads(raw)
                    notes[r] = (str(name), float(t))
            if len(notes) == world - 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        mine = blame_order(section, since_wall)
        earlier = [r for r, (name, t) in notes.items() if blame_order(name, t) < mine]
        if earlier:
            time.sleep(2 * COMPARE_S)  # The rank that stopped first reports; the peer watch ends this one meanwhile.
        now = time.time()
        return "".join(f"; rank {r} in {name!r} for {now - t:.0f} s" for r, (name, t) in sorted(notes.items()))
