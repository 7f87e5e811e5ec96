"""Riding out a store outage: retry with capped exponential back-off for a window of time, log it once when it starts
and once when it ends, count the time it cost, and stop with one line when it lasts longer than the window.

    clock = OutageClock("data (rank 3)", log.warning)          # one per process, or shared by a rank's workers
    data = ride_out(lambda: fs.cat_file(path), window_s=600, option="data.outage_window_s", clock=clock,
                    what=f"reading {url}", classify=outage_reason)

What counts as an outage (`outage_reason`): the store refuses or drops connections, a connection or read times out,
or it answers 5xx (overloaded, restarting). A missing object (404) is an outage only where the caller knows the
object exists and sees another known object missing as well (a store restarting with its index not yet loaded;
`data/storage.py` and `checkpoint/storage.py` check a canary object). Everything else (rejected credentials, a bad
request, a damaged file) is not retried here.

Used by data reads (`ect_scale/data/storage.py`) and checkpoint I/O (`ect_scale/checkpoint/storage.py`). This module
imports nothing from the package but `errors`.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from typing import Any, Callable, Optional

from ect_scale.runtime.errors import UserError

FIRST_BACKOFF_S = 0.5  # Back-off before the first retry; doubles per retry ...
MAX_BACKOFF_S = 10.0  # ... up to this (a store that is back is noticed within about this long).

_OUTAGE_NAMES = {
    "ConnectionRefusedError": "connection refused",
    "ConnectionResetError": "connection reset",
    "ConnectionAbortedError": "connection aborted",
    "BrokenPipeError": "connection broken",
    "EndpointConnectionError": "cannot connect",
    "ClientConnectorError": "cannot connect",
    "ConnectTimeoutError": "connect timeout",
    "ReadTimeoutError": "read timeout",
    "SocketTimeoutError": "read timeout",
    "ServerTimeoutError": "timeout",
    "TimeoutError": "timeout",
    "FSTimeoutError": "timeout",
    "ConnectionClosedError": "connection closed",
    "ServerDisconnectedError": "connection closed",
    "ClientOSError": "connection error",
    "ClientPayloadError": "transfer cut",
    "ResponseStreamingError": "transfer cut",
    "IncompleteRead": "transfer cut",
}
_OUTAGE_ERRNOS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EPIPE: "connection broken",
}
_SERVER_CODES = {"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout", "ServerBusy"}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}


class StoreOutageError(UserError):
    """The store did not answer for longer than the outage window (the message names the option that sets it)."""


def _chain(exc: Optional[BaseException]):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _response(exc: BaseException) -> tuple[Optional[str], int]:
    """(error code, HTTP status) of a botocore-style ClientError (anything with a `response` dict), else (None, 0)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None, 0
    code = str((response.get("Error") or {}).get("Code", "")) or None
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def outage_reason(exc: BaseException) -> Optional[str]:
    """A short reason if `exc` (or an exception it was raised from) looks like a store outage, else None."""
    for e in _chain(exc):
        name = type(e).__name__
        code, status = _response(e)
        if status >= 500 or code in _SERVER_CODES:
            return f"HTTP {status} {code}" if status and code and code != str(status) else f"HTTP {status or code}"
        if code is not None or isinstance(e, (PermissionError, FileNotFoundError)):
            return None  # The store answered (4xx): not an outage.
        if name in _OUTAGE_NAMES:
            return _OUTAGE_NAMES[name]
        if isinstance(e, OSError) and e.errno in _OUTAGE_ERRNOS:
            return _OUTAGE_ERRNOS[e.errno]
    return None


def is_missing(exc: BaseException) -> bool:
    """Whether `exc` says the object does not exist (404)."""
    for e in _chain(exc):
        code, status = _response(e)
        if isinstance(e, FileNotFoundError) or status == 404 or code in _MISSING_CODES:
            return True
    return False


def error_codes(exc: BaseException) -> set[str]:
    """The S3 error codes of `exc` and of the exceptions it was raised from (e.g. {"NoSuchBucket"})."""
    return {code for e in _chain(exc) if (code := _response(e)[0])}


def backoff_s(attempt: int) -> float:
    """Capped exponential back-off with jitter: about 0.5, 1, 2, 4, 8, 10, 10, ... s."""
    return min(FIRST_BACKOFF_S * 2.0**attempt, MAX_BACKOFF_S) * random.uniform(0.5, 1.0)


class OutageClock:
    """The outages seen by one process, or by all processes of a rank when they share `shared` (a
    `multiprocessing` Array of three doubles: start of the current outage (0 = none), seconds lost to earlier ones,
    how many there were). The first process to fail logs the start; the one that sees the store come back logs
    the end and its length."""

    def __init__(self, label: str, log: Callable[[str], None], shared: Any = None):
        self.label, self.log = label, log
        self.shared = shared
        self._local = [0.0, 0.0, 0.0]
        self._lock = shared.get_lock() if shared is not None else threading.Lock()

    def __getstate__(self) -> dict:  # Sent to DataLoader workers (the shared array travels with the spawn).
        return {"label": self.label, "log": self.log, "shared": self.shared}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["label"], state["log"], state["shared"])

    @property
    def _cells(self):
        return self.shared if self.shared is not None else self._local

    def failed(self, reason: str, window_s: float, option: str, since: Optional[float] = None) -> None:
        """A request (sent at wall time `since`) failed like an outage: start one (and log it) unless one is going
        on."""
        with self._lock:
            cells = self._cells
            if cells[0]:
                return
            cells[0], cells[2] = since or time.time(), cells[2] + 1
            n = int(cells[2])
        self.log(
            f"{self.label}: the store is not answering ({reason}); retrying for up to {window_s:g} s ({option}). "
            f"Outage {n} of this run"
        )

    def recovered(self) -> None:
        """A request that had failed went through: end the current outage (and log its length)."""
        with self._lock:
            cells = self._cells
            since = cells[0]
            if not since:
                return
            lasted = max(0.0, time.time() - since)
            cells[0], cells[1] = 0.0, cells[1] + lasted
        self.log(f"{self.label}: the store is back after {lasted:.1f} s of outage; continuing where it stopped")

    def lost_sec(self) -> float:
        """Seconds of outage so far (the ongoing one included)."""
        cells = self._cells
        since = cells[0]
        return cells[1] + (max(0.0, time.time() - since) if since else 0.0)

    def count(self) -> int:
        return int(self._cells[2])


def ride_out(
    fn: Callable[[], Any],
    *,
    window_s: float,
    option: str,
    clock: OutageClock,
    what: str,
    classify: Callable[[BaseException], Optional[str]] = outage_reason,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Optional[Callable[[], None]] = None,
) -> Any:
    """`fn()`, retried while it fails like an outage (`classify` gives a reason), for up to `window_s` seconds from the
    first failed attempt; then `StoreOutageError` naming `what`, the reason and `option`. Other errors pass through.
    `on_retry` runs before each retry (e.g. forget cached connections or listings)."""
    first: Optional[float] = None
    attempt = 0
    while True:
        sent, sent_wall = time.monotonic(), time.time()
        try:
            result = fn()
        except StoreOutageError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below; anything else is re-raised
            reason = classify(e)
            if reason is None:
                if first is not None:  # The store answered (e.g. a 404 believed once it is back): the outage ended.
                    clock.recovered()
                raise
            now = time.monotonic()
            first = sent if first is None else first  # The outage began with the first request that failed.
            clock.failed(reason, window_s, option, since=sent_wall)
            left = first + window_s - now
            if left <= 0:
                raise StoreOutageError(
                    f"{what}: the store has not answered for {now - first:.0f} s ({reason}: {type(e).__name__}: "
                    f"{str(e)[:200]}), longer than {option}={window_s:g} s",
                    f"check that the store is up and reachable from this node; raise {option} to wait longer. "
                    "Re-run the same command once it is back: training resumes from the latest complete checkpoint",
                ) from e
            sleep(min(backoff_s(attempt), left))
            attempt += 1
            if on_retry is not None:
                on_retry()
            continue
        if first is not None:
            clock.recovered()
        return result
