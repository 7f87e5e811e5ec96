"""When one rank fails, the others stop within seconds instead of waiting in a collective until the timeout.

The failing rank records `(rank, one-line message)` under a key of the process group's rendezvous store
(MASTER_ADDR:MASTER_PORT, hosted by rank 0 or by torchrun's agent); the first failure wins (`record_failure`).
Every rank of a launcher or tool watches that key from a daemon thread and, once another rank has failed, notes it
in its own log and exits with code 2 (`os._exit`: it may be blocked inside a collective, where Python cannot run).
A watcher also stops its rank when the store is unreachable for several seconds (the rank hosting it died).
Every rank that learns of the failure acknowledges it, and the failing rank waits for those acknowledgements (a
few seconds at most, `wait_for_acks`) before it leaves: when it hosts the store, leaving takes the store along.

Only entry points opt in (`enable()`, from `ect_scale.runtime.entry`): library use and tests never get a watcher. The
watch starts when the process group is up (`dist.init` / `dist.init_from_env` call `start()`) and must be
stopped before an orderly shutdown (`dist.shutdown` calls `stop()` before its barrier), so that ranks leaving
normally are never mistaken for failures.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
from typing import Callable, Optional

KEY = "ect_scale/first_failure"
ACKS = "ect_scale/failure_acks"
POLL_S = 1.0
STORE_MISSES = 5  # Consecutive failed polls (about 5 s) before the store counts as gone.
NON_ZERO_GRACE_S = 2.0  # A failing rank other than 0 waits this long for rank 0 to report the same failure.

_enabled = False
_watch: Optional["_Watch"] = None
_on_peer_failure: Optional[Callable[[Optional[tuple[int, str]]], None]] = None


def enable(on_peer_failure: Callable[[Optional[tuple[int, str]]], None]) -> None:
    """Watch for failed peers once the process group is up; `on_peer_failure(first)` runs before the exit
    (`first` is (rank, message), or None when the store was lost)."""
    global _enabled, _on_peer_failure
    _enabled, _on_peer_failure = True, on_peer_failure


def start(rank: int, world_size: int) -> None:
    """Start watching (no-op unless enabled, for a single process, or when already watching)."""
    global _watch
    if not _enabled or world_size < 2 or _watch is not None:
        return
    store = _connect()
    if store is not None:
        _watch = _Watch(store, rank)


def stop() -> None:
    """Stop watching (before an orderly shutdown, or once this rank is itself failing)."""
    global _watch
    watch, _watch = _watch, None
    if watch is not None:
        watch.stop()


def record_failure(rank: int, message: str) -> Optional[tuple[int, str]]:
    """Record this rank's failure unless another rank's came first; returns the first failure (rank, message), or
    None without a reachable store. Ranks other than 0 first give rank 0 a moment to report (it prints plainly)."""
    store = _connect()
    if store is None:
        return None
    try:
        if rank != 0:
            deadline = time.monotonic() + NON_ZERO_GRACE_S
            while time.monotonic() < deadline and not store.check([KEY]):
                time.sleep(0.1)
        first = _decode(store.compare_set(KEY, "", json.dumps([rank, message])))
        if first[0] != rank:
            store.add(ACKS, 1)
        return first
    except Exception:  # noqa: BLE001 - the store went away: decide alone
        return None


def wait_for_acks(world_size: int, timeout_s: float = 5.0) -> None:
    """The first failing rank: wait until every other rank has seen the failure (or `timeout_s` passed)."""
    store = _connect()
    deadline = time.monotonic() + timeout_s
    try:
        while store is not None and store.add(ACKS, 0) < world_size - 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    except Exception:  # noqa: BLE001 - the store went away: nobody left to wait for
        pass


def publish(key: str, value: str) -> bool:
    """Set `key` in the rendezvous store (False without a reachable store)."""
    store = _connect()
    if store is None:
        return False
    try:
        store.set(key, value)
        return True
    except Exception:  # noqa: BLE001 - the store went away
        return False


def lookup(key: str) -> Optional[str]:
    """The value of `key` in the rendezvous store, or None (unset, or no reachable store)."""
    store = _connect()
    try:
        if store is None or not store.check([key]):
            return None
        raw = store.get(key)
        return raw.decode() if isinstance(raw, bytes) else str(raw)
    except Exception:  # noqa: BLE001
        return None


def _connect():
    """A client connection to the rendezvous store, or None (no group environment, or unreachable)."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port or port == "0":
        return None
    try:
        import torch.distributed as tdist

        return tdist.TCPStore(host, int(port), None, False, datetime.timedelta(seconds=5), wait_for_workers=False)
    except Exception:  # noqa: BLE001 - unreachable
        return None


def _decode(raw: bytes) -> tuple[int, str]:
    rank, message = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    return int(rank), str(message)


class _Watch:
    def __init__(self, store, rank: int):
        self.store, self.rank = store, rank
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ect-peer-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * POLL_S + 5)

    def _run(self) -> None:
        misses = 0
        while not self._stop.wait(POLL_S):
            try:
                first = _decode(self.store.get(KEY)) if self.store.check([KEY]) else None
                misses = 0
            except Exception:  # noqa: BLE001 - the store may be gone: count, then give up
                misses += 1
                first = None
                if misses < STORE_MISSES:
                    continue
            if first is not None and first[0] == self.rank:
                continue  # This rank's own failure: its main thread is reporting it.
            if first is not None or misses >= STORE_MISSES:
                self._abort(first)

    def _abort(self, first: Optional[tuple[int, str]]) -> None:
        if self._stop.is_set():
            return  # Stopped meanwhile: this rank is shutting down or reporting its own failure.
        try:
            if first is not None:
                self.store.add(ACKS, 1)
        except Exception:  # noqa: BLE001 - the store went away meanwhile
            pass
        try:
            if _on_peer_failure is not None:
                _on_peer_failure(first)
        finally:
            os._exit(2)
