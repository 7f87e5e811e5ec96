"""One owner per run folder: a lock file (local or shared filesystems) or a lease object (object storage).

    lock = FolderLock("runs/x")       # or "s3://bucket/runs/x/checkpoints"
    previous = lock.acquire()         # FolderBusyError naming a live holder; returns a dead holder's record taken over
    ...
    lock.release()                    # also when the run fails; a killed run's lock is taken over next time

The lock is `<folder>/LOCK`, a small JSON record of the holder: host, PID, the process's start time (to tell a reused
PID apart), when the run started and when it last renewed the record. A holder is alive while

  * on this host: its process still runs (same PID and process start time, not exited: a killed run's process
    that nobody reaped counts as dead; a local lock file is also held with `flock`, which the kernel releases when
    the process dies, however it dies);
  * on another host: it renewed the record within `stale_s` (a daemon thread renews it every `stale_s / 4`).

A second run on a live holder's folder is refused; a dead holder's lock is taken over, and `acquire` returns the
dead holder's record so the caller can log it. The record stays after `release` (marked released), which keeps the
last holder on record and gives object-storage I/O a known object (`checkpoint/storage.py`: a 404 for it too means
the store is restarting). On object storage the takeover is a read-check-write, not atomic: two runs started within
the same second on one folder could both proceed; everything later (renewals) detects that and stops one of them.
If the record is taken over while the run is alive (it could not renew for `stale_s`, e.g. a store outage), the
run learns it at its next renewal and stops (`on_lost`).

On object storage, taking the lock rides out a store outage (`runtime/outage.py`: refused or dropped connections,
timeouts, 5xx, and 404s for a record being written or just written, as from a store restarting) for
`outage_window_s` (the trainer passes `checkpoint.outage_window_s`), then stops with one line (`StoreOutageError`).
An outage restarts the whole read-check-write, so the record checked is one the store answered with. Releasing rides
out up to `RELEASE_WINDOW_S` (a record left unreleased is recognised as dead anyway); renewals retry at the next one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Optional

from ect_scale.runtime.errors import ConfigError, UserError
from ect_scale.runtime.outage import OutageClock, error_codes, is_missing, outage_reason, ride_out
from ect_scale.runtime.procs import has_exited, proc_stat

LOCK_NAME = "LOCK"
STALE_S = 600.0  # A holder on another host that has not renewed its lock for this long counts as dead.
RELEASE_WINDOW_S = 30.0  # Releasing waits at most this long for a store that is out (not a whole outage window).
OPTION = "checkpoint.outage_window_s"  # The option that sets how long taking the lock rides out an outage.
_HELD: dict[str, "FolderLock"] = {}  # The locks this process holds, by lock path.


class FolderBusyError(ConfigError):
    """Another live run holds the folder: run_dir / checkpoint.dir name a folder in use. A configuration error, so
    that the refused start writes no error log (into the other run's logs/)."""


def process_start(pid: int) -> Optional[str]:
    """An identity of process `pid` that survives PID reuse (Linux: boot id + start time in clock ticks); None if
    there is no such process or it has exited (a killed run's process that nobody reaped holds nothing)."""
    try:
        start = proc_stat(pid)[19]
        if has_exited(pid):
            return None
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{f.read().strip()}:{start}"
    except (OSError, IndexError):
        return None


def holder_alive(record: dict, stale_s: float, now: Optional[float] = None) -> bool:
    """Whether the holder in `record` still runs (see the module docstring)."""
    if record.get("released"):
        return False
    if record.get("host") == socket.gethostname():
        pid = int(record.get("pid", 0))
        if pid <= 0:
            return False
        started = process_start(pid)
        return started is not None and started == record.get("process_start", started)
    renewed = float(record.get("renewed", 0.0))
    return (now or time.time()) - renewed < stale_s


def _mine(record: dict) -> bool:
    return (
        record.get("host") == socket.gethostname()
        and record.get("pid") == os.getpid()
        and record.get("process_start") == process_start(os.getpid())
    )


def describe_holder(record: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started", 0))))
    renewed = max(0.0, time.time() - float(record.get("renewed", 0)))
    return (
        f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, started {started}, renewed {renewed:.0f} s ago"
    )


class FolderLock:
    """The lock of one folder (local path or fsspec URL); see the module docstring."""

    def __init__(
        self,
        folder: str,
        stale_s: float = STALE_S,
        on_lost: Optional[Callable[[str], None]] = None,
        fs=None,
        outage_window_s: float = 0.0,
    ):
        """`fs`: the fsspec filesystem of an object-storage folder (default: fsspec's for its protocol);
        `outage_window_s`: how long taking the lock there rides out a store outage (0: one attempt)."""
        self.folder = folder.rstrip("/") or "/"
        self.local = "://" not in folder or folder.startswith("file://")
        self.path = (folder.removeprefix("file://") if self.local else self.folder).rstrip("/") + "/" + LOCK_NAME
        self.key = os.path.abspath(self.path) if self.local else self.path
        self.stale_s = stale_s
        self.on_lost = on_lost
        self.outage_window_s = outage_window_s
        self.clock = OutageClock(f"run folder lock {self.path}", logging.getLogger("ect_scale.runtime").warning)
        self.record: Optional[dict] = None
        self._fd: Optional[int] = None
        self._fs = fs
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ record I/O
    def _filesystem(self):
        if self._fs is None:
            import fsspec

            self._fs, _ = fsspec.core.url_to_fs(self.path)
        return self._fs

    def _object_path(self) -> str:
        return self._filesystem()._strip_protocol(self.path)

    def read(self) -> Optional[dict]:
        """The current record, or None if there is none (or it is unreadable). One attempt: store errors pass."""
        return self._read(missing_ok=True)

    def _read(self, missing_ok: bool) -> Optional[dict]:
        try:
            if self.local:
                with open(self.path) as f:
                    text = f.read()
            else:
                fs = self._filesystem()
                fs.invalidate_cache(self._object_path())
                text = fs.cat_file(self._object_path()).decode()
            return json.loads(text) if text.strip() else None
        except FileNotFoundError:
            if not missing_ok:
                raise
            return None
        except ValueError:  # Not JSON (or not UTF-8): no record.
            return None

    def _write(self, record: dict) -> None:
        text = json.dumps(record, indent=1) + "\n"
        if self.local:
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)  # The flock is on the folder's lock handle (below), not on this file.
        else:
            self._filesystem().pipe_file(self._object_path(), text.encode())

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> Optional[dict]:
        """See `_acquire`; on object storage, a store that cannot be reached is one line."""
        try:
            return self._acquire()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - botocore/aiohttp/OS errors of a store that cannot be reached
            if self.local:
                raise
            raise UserError(
                f"cannot take the lock {self.path}: {type(e).__name__}: {e}",
                "check that the store is up and reachable from this node (endpoint and credentials: docs/data.md)",
            ) from e

    def _acquire(self) -> Optional[dict]:
        """Take the folder; returns the record of a dead holder that was taken over (None if the folder was free).
        Raises `FolderBusyError` if a live run holds it, `StoreOutageError` if the store stays out for longer than
        `outage_window_s`. A lock of this very process (a run object that failed to start and was not released, or
        a release that could not reach the store) is taken without a note."""
        earlier = _HELD.get(self.key)
        if earlier is not None and earlier is not self:
            earlier.release()
        if self.local:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._flock()
        try:
            previous = self._ride("taking the lock", self._take, self.outage_window_s, OPTION)
        except BaseException:
            self._unflock()
            raise
        self._start_renewals()
        _HELD[self.key] = self
        dead = previous is not None and not previous.get("released")
        return previous if dead else None

    def _take(self) -> Optional[dict]:
        """Read the record, refuse a live holder, write ours (object storage: and check that ours stayed); returns
        the previous record (None where there was none or it was this process's)."""
        previous = self.read()
        if previous is not None and _mine(previous):
            previous = None  # Left by this process (a release that could not reach the store): not another run.
        if previous is not None and holder_alive(previous, self.stale_s):
            raise self._busy(previous)
        now = time.time()
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": process_start(os.getpid()),
            "started": now,
            "renewed": now,
            "token": uuid.uuid4().hex,
            "released": False,
        }
        self._write(record)
        if not self.local:
            time.sleep(0.2)  # Let a concurrent writer's record land, then check that ours is the one that stayed.
            current = self._read(missing_ok=False)  # A 404 for the record just written: the store is restarting.
            if current is None or current.get("token") != record["token"]:
                raise self._busy(current or {})
        self.record = record
        return previous

    def release(self) -> None:
        """Mark the record released (if it is still ours) and stop renewing; safe to call twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        record, self.record = self.record, None
        if _HELD.get(self.key) is self:
            del _HELD[self.key]
        if record is not None:
            window_s = min(self.outage_window_s, RELEASE_WINDOW_S)
            try:
                self._ride("releasing the lock", lambda: self._mark_released(record), window_s, "releasing the run")
            except Exception:  # noqa: BLE001 - best effort: a dead holder is recognised anyway
                pass
        self._unflock()

    def _mark_released(self, record: dict) -> None:
        current = self.read()
        if current is None or current.get("token") == record["token"]:
            self._write({**record, "released": True, "renewed": time.time()})

    # ------------------------------------------------------------------ outages (object storage)
    def _ride(self, what: str, fn: Callable[[], Any], window_s: float, option: str) -> Any:
        """`fn()`, riding out a store outage for `window_s` (object storage; local: just `fn()`)."""
        if self.local:
            return fn()
        return ride_out(
            fn,
            window_s=window_s,
            option=option,
            clock=self.clock,
            what=f"{what} {self.path}",
            classify=self._outage,
            on_retry=lambda: self._filesystem().invalidate_cache(),
        )

    def _outage(self, error: BaseException) -> Optional[str]:
        """An outage (see `runtime/outage.py`), or a 404 for the record being written or just written (a missing
        record is no error when reading it; a missing bucket is no outage)."""
        reason = outage_reason(error)
        if reason is None and is_missing(error) and "NoSuchBucket" not in error_codes(error):
            reason = f"404 for {self.path} while writing it: the store is restarting?"
        return reason

    def _busy(self, holder: dict) -> FolderBusyError:
        return FolderBusyError(
            f"{self.folder} is in use by another run ({describe_holder(holder)}); two runs in one folder would "
            "overwrite each other's checkpoints",
            f"wait for that run to end or stop it, or give this run its own run_dir / checkpoint.dir. If that "
            f"run is dead (its host is gone), the lock is taken over once it is {self.stale_s:g} s old, or delete "
            f"{self.path}",
        )

    # ------------------------------------------------------------------ flock (local)
    def _flock(self) -> None:
        import fcntl

        path = os.path.join(os.path.dirname(self.path) or ".", f".{LOCK_NAME}.flock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # The usual file mode (0666 minus the umask).
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._busy(self.read() or {}) from None
        self._fd = fd

    def _unflock(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # Closing the descriptor releases the flock.

    # ------------------------------------------------------------------ renewals
    def _start_renewals(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="ect-folder-lock", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.stale_s / 4):
            record = self.record
            if record is None:
                return
            try:
                current = self.read()
            except Exception:  # noqa: BLE001 - the store may be out; try again at the next renewal
                continue
            if current is not None and current.get("token") != record["token"]:
                self.record = None
                if self.on_lost is not None:
                    self.on_lost(f"{self.folder} was taken over by another run ({describe_holder(current)})")
                return
            try:
                record["renewed"] = time.time()
                self._write(record)
            except Exception:  # noqa: BLE001
                continue
