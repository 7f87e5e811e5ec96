"""What every launcher and tool does around its work: one readable line for an expected failure, processes that
do not outlive the run, and ranks that stop when a peer fails.

    def main(argv=None) -> int:
        return entry.run(lambda: body(argv), program="train")

`run` returns the exit code:
  * 0 (or the body's code) after an orderly shutdown of the process group;
  * 2 for an expected failure (`errors.user_error_of`): `error: <what>. Fix: <how>` on stderr, printed once: by the
    first rank that failed (rank 0 is preferred when all fail alike), as `error (rank R): ...` on other ranks;
  * 1 for anything else, with its traceback, printed the same way.
The full traceback always goes to `<log dir>/error-rank<R>.log` (`set_log_dir`, e.g. `<run_dir>/logs`; a temporary
folder before the run directory is known), and the second line says where. Ranks that did not fail exit within
seconds (`ect_scale.runtime.peers`), and a rank started by the deepspeed launcher or torchrun exits when its launcher
dies (for `deepspeed`, also when the `deepspeed` command itself dies: `procs.exit_with_parent(grandparent=True)`).

Hangs can be diagnosed: `kill -USR2 <pid>` prints every thread's stack to stderr, and a process still alive
`procs.EXIT_WATCHDOG_S` after its work ended (`procs.arm_exit_watchdog`, armed when the training loop ends and
when the body returns) prints them by itself, so a run that does not exit shows where it waits.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from typing import Callable, Optional

from ect_scale.runtime import dist, peers
from ect_scale.runtime.errors import ConfigError, UserError, user_error_of
from ect_scale.runtime.procs import (
    arm_exit_watchdog,
    enable_stack_dumps,
    exit_with_parent,
    started_by_deepspeed,
    started_by_launcher,
)

TEARDOWN_S = 10.0  # The longest a failing process spends leaving the process group before it exits anyway.

_log_dir: Optional[str] = None
_program = "ect_scale"


def set_log_dir(path: Optional[str]) -> None:
    """Where error logs go from now on (e.g. `<run_dir>/logs`); created only when something is written."""
    global _log_dir
    _log_dir = path


def log_path(rank: Optional[int] = None) -> str:
    rank = _rank() if rank is None else rank
    if _log_dir is not None:
        return os.path.join(_log_dir, f"error-rank{rank}.log")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(tempfile.gettempdir(), f"ect_scale-logs-{os.getuid()}", f"{_program}-{stamp}-rank{rank}.log")


def run(body: Callable[[], int], program: str) -> int:
    """Run `body` as an entry point (see the module docstring); returns the process exit code."""
    global _program, _log_dir
    _program, _log_dir = program, None
    if started_by_launcher():
        note = lambda what: _write_log(_rank(), f"stopping this rank: {what}\n")  # noqa: E731
        exit_with_parent(pdeathsig=False, grandparent=started_by_deepspeed(), note=note)
    peers.enable(_note_peer_failure)
    _show_package_logs()
    enable_stack_dumps()
    try:
        code = body()
    except KeyboardInterrupt:
        if _rank() == 0:
            print(
                "error: interrupted (Ctrl-C). Re-run the same command to resume from the latest checkpoint",
                file=sys.stderr,
                flush=True,
            )
        return _teardown(130)
    except Exception as exc:  # noqa: BLE001 - SystemExit (argparse, --help) passes through
        return _fail(exc)
    arm_exit_watchdog()
    dist.shutdown()
    return code


def abort(err: UserError, code: int, log_text: str = "") -> None:
    """Stop this process now, from any thread (the main thread may be stuck in a collective): `log_text` and `err` go
    to this rank's log, the failure to the other ranks (they stop within seconds), `error: <err>` to stderr (printed
    once, as for any failure), then `os._exit(code)`."""
    peers.stop()
    rank = _rank()
    path = _write_log(rank, f"{log_text}{err}\n")
    first = peers.record_failure(rank, str(err)) if dist.is_initialized() else None
    if _should_print(rank, err, first):
        where = f"\n  (full log: {path})" if path else ""
        print(f"{_prefix(rank)}: {err}{where}", file=sys.stderr, flush=True)
    if first is not None and first[0] == rank:
        peers.wait_for_acks(dist.get_world_size())
    sys.stdout.flush()
    os._exit(code)


def _fail(exc: BaseException) -> int:
    peers.stop()
    rank = _rank()
    err = user_error_of(exc)
    config = isinstance(err, ConfigError)  # Raised before anything ran: the line says it all.
    path = None if config else _write_log(rank, "".join(traceback.format_exception(exc)))
    line = str(err) if err is not None else f"unexpected {type(exc).__name__}: {exc}"
    first = peers.record_failure(rank, line) if dist.is_initialized() else None
    if _should_print(rank, err, first):
        if err is None:
            traceback.print_exception(exc, file=sys.stderr)
        where = "" if config else f"\n  (full log: {path})" if path else "\n  (no log file could be written)"
        print(f"{_prefix(rank)}: {line}{where}", file=sys.stderr, flush=True)
    if first is not None and first[0] == rank:
        peers.wait_for_acks(dist.get_world_size())  # Keep the store (if this rank hosts it) until all have read it.
    return _teardown(2 if err is not None else 1)


def _should_print(rank: int, err: Optional[UserError], first: Optional[tuple[int, str]]) -> bool:
    """The first failing rank prints. Without a process group every rank decides alone: rank 0 prints, and other
    ranks too unless the error is a configuration error (those are the same on every rank)."""
    if first is not None:
        return first[0] == rank
    return rank == 0 or not isinstance(err, ConfigError)


class _RankZeroInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or _rank() == 0


class _Stdout(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is when a message comes (callers and test harnesses may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def _show_package_logs() -> None:
    """The package's log messages on stdout: INFO on rank 0 (e.g. `data: exact resume at ...`), warnings on every
    rank. DataLoader workers keep Python's default (warnings on stderr)."""
    logger = logging.getLogger("ect_scale")
    if any(isinstance(h, _Stdout) for h in logger.handlers):
        return
    handler = _Stdout()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_RankZeroInfo())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _prefix(rank: int) -> str:
    return "error" if rank == 0 else f"error (rank {rank})"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else dist.env_rank()


def _write_log(rank: int, text: str) -> Optional[str]:
    """Append `text` with a header to this rank's log (the temporary folder if the log dir is not writable)."""
    header = (
        f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {_program} rank {rank} pid {os.getpid()} on "
        f"{platform.node()}\n$ {' '.join(sys.argv)}\n"
    )
    for path in dict.fromkeys([log_path(rank), _fallback(log_path(rank))]):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a") as f:
                f.write(header + text + ("" if text.endswith("\n") else "\n"))
            return path
        except OSError:
            continue
    return None


def _fallback(path: str) -> str:
    folder = os.path.join(tempfile.gettempdir(), f"ect_scale-logs-{os.getuid()}")
    return os.path.join(folder, f"{_program}-{os.path.basename(path)}")


def _note_peer_failure(first: Optional[tuple[int, str]]) -> None:
    """Peer watch: another rank failed (or the rank hosting the store vanished); note it before exiting."""
    what = (
        f"rank {first[0]} failed: {first[1]}"
        if first is not None
        else "lost the process group's rendezvous store (the rank hosting it died)"
    )
    path = _write_log(_rank(), f"stopping this rank because {what}; every thread's stack:\n")
    if path is not None:  # Where this rank was: e.g. in the collective that a hung rank never joined.
        with open(path, "a") as f:
            faulthandler.dump_traceback(f, all_threads=True)
    sys.stdout.flush()
    sys.stderr.flush()


def _teardown(code: int) -> int:
    """Leave the process group without waiting for peers; exit hard if that hangs (e.g. in a stuck collective)."""
    timer = threading.Timer(TEARDOWN_S, os._exit, (code,))
    timer.daemon = True
    timer.start()
    peers.stop()
    try:
        dist.shutdown(wait=False)
    except Exception:  # noqa: BLE001 - the group may already be broken
        pass
    timer.cancel()
    return code
