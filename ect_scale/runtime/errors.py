"""Errors a user can fix, and how failures raised by others are recognised as such.

`UserError(what, fix)` is the base of every expected failure the package raises: configuration (`ConfigError`),
storage (`StorageError`), data manifests, network files, checkpoints, reference statistics, detectors, EDM2 imports.
Its text is `<what>. Fix: <how>`. `user_error_of(exc)` also recognises expected failures raised by Python, PyTorch
or DeepSpeed: a missing or unreadable file, a full disk, CUDA out of memory, a rendezvous port already in use, a
lost connection to another rank. Everything else is a bug and keeps its traceback (`ect_scale.runtime.entry`).

This module imports nothing from the package, so every module may import it.
"""

from __future__ import annotations

import errno
import os
from typing import Optional

FIX = ". Fix: "


class UserError(Exception):
    """An expected failure the user can fix. `str(e)` is `<what>. Fix: <fix>` (one line)."""

    def __init__(self, what: str, fix: Optional[str] = None):
        super().__init__(what if fix is None else f"{what.rstrip('. ')}{FIX}{fix}")

    @property
    def what(self) -> str:
        return str(self).split(FIX, 1)[0]

    @property
    def fix(self) -> Optional[str]:
        parts = str(self).split(FIX, 1)
        return parts[1] if len(parts) == 2 else None


class ConfigError(UserError, ValueError):
    """A configuration value is invalid. The message names the option, the constraint and the fix."""


class PeerLostError(UserError):
    """Another rank stopped answering in the middle of a collective operation (it died or was killed)."""


_OOM_FIX = (
    "lower train.batch_gpu (train.batch_size stays the same: the engine adds accumulation rounds), or use "
    "engine.zero_stage=2/3, or a smaller network preset; launchers/bench.py --max-memory-gib finds what fits"
)
_PORT_FIX = (
    "give every concurrent run on a machine its own port: `deepspeed --master_port <port> ...`, "
    "`torchrun --master-port <port> ...` or MASTER_PORT=<port>; a single process without MASTER_PORT picks "
    "a free port itself"
)
_PEER_FIX = (
    "look for the first error above or in the run's logs/ folder (or the kernel log for the out-of-memory "
    "killer: dmesg); then re-run the same command, which resumes from the latest complete checkpoint"
)
_PEER_SIGNS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "remote process exited",
    "NCCL communicator was aborted",
    "ProcessGroupNCCL is aborted",
)
_OS_FIXES = {
    errno.ENOENT: "check the path (and the working directory it is relative to)",
    errno.EACCES: "check the file's permissions, or choose a location you can access",
    errno.EPERM: "check the file's permissions, or choose a location you can access",
    errno.EROFS: "choose a writable location (run_dir, checkpoint.dir)",
    errno.ENOSPC: "free space there, or point run_dir / checkpoint.dir at a larger filesystem",
    errno.EDQUOT: "free space within your quota, or point run_dir / checkpoint.dir elsewhere",
    errno.EISDIR: "name a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
}


def user_error_of(exc: BaseException) -> Optional[UserError]:
    """The `UserError` describing `exc` if it is an expected failure, else None (a bug: keep the traceback)."""
    if isinstance(exc, UserError):
        return exc
    text = f"{exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text:
        return UserError(f"out of GPU memory ({first})", _OOM_FIX)
    if "EADDRINUSE" in text or "address already in use" in text.lower():
        port = os.environ.get("MASTER_PORT", "?")
        return UserError(
            f"the rendezvous port {os.environ.get('MASTER_ADDR', '127.0.0.1')}:{port} (MASTER_PORT) is "
            "already in use, probably by another run on this machine",
            _PORT_FIX,
        )
    if any(sign in text for sign in _PEER_SIGNS):
        return PeerLostError(
            f"lost the connection to another rank during a collective operation ({first}); that "
            "rank probably failed, ran out of host memory or was killed",
            _PEER_FIX,
        )
    if isinstance(exc, OSError) and exc.errno in _OS_FIXES:
        where = f" {exc.filename}" if exc.filename else ""
        return UserError(f"cannot access{where}: {exc.strerror or first}", _OS_FIXES[exc.errno])
    if FIX in text:  # The package's convention: a message that says how to fix it is meant for the user.
        return UserError(text)
    if isinstance(exc, FileNotFoundError):
        return UserError(first, _OS_FIXES[errno.ENOENT])
    return None
