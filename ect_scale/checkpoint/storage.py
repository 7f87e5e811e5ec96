"""Checkpoint destinations through fsspec: a local/shared filesystem (written in place) or object storage (files are
staged in a node-local folder and uploaded). Atomicity never relies on the store: a checkpoint exists once its
COMPLETE marker exists, and removal deletes the marker first.

On object storage every operation rides out a store outage (refused or dropped connections, timeouts, 5xx) for
`outage_window_s` (`checkpoint.outage_window_s`), logging it once when it starts and once when it ends
(`ect_scale.runtime.outage`); past the window it raises `StoreOutageError`. A 404 is believed only while the
folder's lock record (`runtime/lock.py`, written by the run before any checkpoint I/O) is still there: a store that
answers 404 for that too is restarting, and the operation waits for it like for any outage.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import zlib
from typing import Any, Callable, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ect_scale.checkpoint.layout import MARKER, TAG_RE, CheckpointError
from ect_scale.data.storage import StorageOptions, filesystem, protocol_of
from ect_scale.runtime import dist
from ect_scale.runtime.lock import LOCK_NAME
from ect_scale.runtime.outage import OutageClock, is_missing, outage_reason, ride_out

log = logging.getLogger("ect_scale.checkpoint")

CHUNK = 16 << 20


def crc32_file(path: str) -> int:
    """CRC32 of a local file, read in 16 MiB chunks (about 1 GB/s per core)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def staging_root(configured: Optional[str], dest_url: str) -> str:
    """Node-local scratch for this destination: <staging>/<host>/<digest of dest>. The host name keeps nodes apart
    even when someone points `checkpoint.staging_dir` at a shared filesystem."""
    base = configured or os.path.join(tempfile.gettempdir(), f"ect_scale-ckpt-{os.getuid()}")
    digest = f"{zlib.crc32(dest_url.encode()):08x}"
    return os.path.join(base, socket.gethostname(), digest)


class Destination:
    """A checkpoint root (`checkpoint.dir`). `options`: timeouts and endpoint of an object store (default: from the
    environment, as for data)."""

    def __init__(self, url: str, outage_window_s: float = 600.0, options: Optional[StorageOptions] = None):
        self.url = url.rstrip("/")
        self.outage_window_s = outage_window_s
        try:
            if protocol_of(self.url) in ("s3", "s3a"):
                self.fs, self.root = filesystem(self.url, (options or StorageOptions()).resolved())
            else:
                self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint.dir: cannot open {self.url} ({e}). Fix: install the fsspec backend "
                "for its protocol (s3fs for s3://) or use a local path"
            ) from None
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        rank = f" (rank {dist.get_rank()})" if dist.get_world_size() > 1 else ""
        self.clock = OutageClock(f"checkpoint store{rank}", log.warning)
        self.canary: Optional[str] = None  # The lock record, when the folder has one (see the module docstring).
        if not self.is_local and self._call("checking", lambda: self.fs.exists(self.path(LOCK_NAME)), LOCK_NAME):
            self.canary = self.path(LOCK_NAME)

    # ------------------------------------------------------------------ outages
    def _call(self, what: str, fn: Callable[[], Any], *parts: str, write: bool = False) -> Any:
        """`fn()`, riding out an outage of an object store (see the module docstring); local: just `fn()`."""
        if self.is_local:
            return fn()
        return ride_out(
            fn,
            window_s=self.outage_window_s,
            option="checkpoint.outage_window_s",
            clock=self.clock,
            what=f"{what} {self.display(*parts)}",
            classify=lambda e: self._outage(e, write),
            on_retry=self.refresh,
        )

    def _outage(self, error: BaseException, write: bool = False) -> Optional[str]:
        """Why `error` is a store outage (None: it is not). A 404 is one where the lock record (the canary) is
        missing too; on a write always, as a PUT never meets a missing key (and asking the canary can race the end
        of a restart and make the 404 look real)."""
        reason = outage_reason(error)
        if reason is None and self.canary is not None and is_missing(error):
            if write:
                reason = f"404 on a write under {self.url}, whose lock record exists: the store is restarting?"
            elif not self._canary_found():
                reason = f"404 for {self.canary} too, which exists: the store is restarting?"
        return reason

    def _canary_found(self) -> bool:
        try:
            self.fs.invalidate_cache(self.canary)
            self.fs.info(self.canary)
            return True
        except Exception:  # noqa: BLE001 - missing, or the store is not answering
            return False

    def _asked_twice(self, what: str, fn: Callable[[], Any], *parts: str) -> Any:
        """`_call`, and once more after a 404 (raised the second time): a restart can end between the 404 and
        the canary's check, which then finds the canary and makes the 404 look real."""
        try:
            return self._call(what, fn, *parts)
        except FileNotFoundError:
            self.refresh()
            return self._call(what, fn, *parts)

    def _found(self, what: str, fn: Callable[[], bool], *parts: str) -> bool:
        """A yes/no lookup whose "no" is checked against the canary like a 404."""

        def lookup() -> bool:
            if not fn():
                raise FileNotFoundError(self.display(*parts))
            return True

        try:
            return self._asked_twice(what, lookup, *parts)
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ naming
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def display(self, *parts: str) -> str:
        return "/".join([self.url, *parts])

    # ------------------------------------------------------------------ reading
    def refresh(self) -> None:
        """Forget cached listings (s3fs caches directory listings per process)."""
        self.fs.invalidate_cache()

    def tags(self) -> list[str]:
        """Checkpoint folders under the root (complete or not), oldest first."""
        self.refresh()
        try:
            entries = self._asked_twice("listing", lambda: self.fs.ls(self.root, detail=False))
        except FileNotFoundError:
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted(n for n in names if TAG_RE.match(n))

    def exists(self, *parts: str) -> bool:
        return self._found("checking", lambda: self.fs.exists(self.path(*parts)), *parts)

    def is_complete(self, tag: str) -> bool:
        return self.exists(tag, MARKER)

    def read_text(self, *parts: str) -> str:
        def read() -> str:
            with self.fs.open(self.path(*parts), "r") as f:
                return f.read()

        return self._call("reading", read, *parts)

    def size(self, *parts: str) -> Optional[int]:
        try:
            return int(self._asked_twice("checking", lambda: self.fs.info(self.path(*parts)), *parts)["size"])
        except FileNotFoundError:
            return None

    def sizes(self, tag: str) -> dict[str, int]:
        """{relative path: size} of every file in a checkpoint folder, from one recursive listing (object stores
        answer it with a few LIST requests instead of one HEAD per file)."""
        self.refresh()
        base = self.path(tag).rstrip("/") + "/"
        try:
            found = self._asked_twice("listing", lambda: self.fs.find(base, detail=True), tag)
        except FileNotFoundError:
            return {}
        return {
            p[len(base) :] if p.startswith(base) else p.rsplit(tag + "/", 1)[-1]: int(info["size"])
            for p, info in found.items()
            if info.get("type") != "directory"
        }

    def download_tree(self, tag: str, local_dir: str) -> None:
        """Copy one checkpoint folder to a local folder (replacing it)."""

        def download() -> None:
            shutil.rmtree(local_dir, ignore_errors=True)
            os.makedirs(local_dir, exist_ok=True)
            self.fs.get(self.path(tag) + "/", local_dir.rstrip("/") + "/", recursive=True)

        self._call("downloading", download, tag)

    # ------------------------------------------------------------------ writing
    def upload(self, local_path: str, *parts: str) -> None:
        """Upload one file and check the stored size (a truncated upload raises)."""
        remote = self.path(*parts)
        self._call("uploading to", lambda: self.fs.put_file(local_path, remote), *parts, write=True)
        self.fs.invalidate_cache(remote)
        stored, want = self.size(*parts), os.path.getsize(local_path)
        if stored != want:
            raise OSError(f"upload of {local_path} to {self.display(*parts)} stored {stored} bytes, expected {want}")

    def write_text_atomic(self, text: str, *parts: str) -> None:
        """Local: write a temporary file and rename it (atomic on POSIX). Object stores: one PUT (atomic)."""
        target = self.path(*parts)
        if self.is_local:
            tmp = target + ".partial"
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        else:
            self._call("writing", lambda: self.fs.pipe_file(target, text.encode()), *parts, write=True)

    def remove_checkpoint(self, tag: str) -> None:
        """Delete a checkpoint folder, its marker first (an interrupted removal leaves an incomplete checkpoint,
        never a complete-looking damaged one)."""
        if not TAG_RE.match(tag):
            raise ValueError(f"refusing to remove {tag!r}: not a checkpoint folder name")
        if self.exists(tag, MARKER):
            self._call("removing", lambda: self.fs.rm(self.path(tag, MARKER)), tag, MARKER)
        if self.exists(tag):
            self._call("removing", lambda: self.fs.rm(self.path(tag), recursive=True), tag)
        self.refresh()
