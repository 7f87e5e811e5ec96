"""Checkpoint destinations through fsspec: a local/shared filesystem (written in place) or object storage (files are
staged in a node-local folder and uploaded). Atomicity never relies on the store: a checkpoint exists once its
COMPLETE marker exists, and removal deletes the marker first.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import zlib
from typing import Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ect_scale.checkpoint.layout import MARKER, TAG_RE, CheckpointError

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
    """A checkpoint root (`checkpoint.dir`)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint.dir: cannot open {self.url} ({e}). Fix: install the fsspec backend "
                "for its protocol (s3fs for s3://) or use a local path"
            ) from None
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

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
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted(n for n in names if TAG_RE.match(n))

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def is_complete(self, tag: str) -> bool:
        return self.exists(tag, MARKER)

    def read_text(self, *parts: str) -> str:
        with self.fs.open(self.path(*parts), "r") as f:
            return f.read()

    def size(self, *parts: str) -> Optional[int]:
        try:
            return int(self.fs.info(self.path(*parts))["size"])
        except FileNotFoundError:
            return None

    def sizes(self, tag: str) -> dict[str, int]:
        """{relative path: size} of every file in a checkpoint folder, from one recursive listing (object stores
        answer it with a few LIST requests instead of one HEAD per file)."""
        self.refresh()
        base = self.path(tag).rstrip("/") + "/"
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {
            p[len(base) :] if p.startswith(base) else p.rsplit(tag + "/", 1)[-1]: int(info["size"])
            for p, info in found.items()
            if info.get("type") != "directory"
        }

    def download_tree(self, tag: str, local_dir: str) -> None:
        """Copy one checkpoint folder to a local folder (replacing it)."""
        shutil.rmtree(local_dir, ignore_errors=True)
        os.makedirs(local_dir, exist_ok=True)
        self.fs.get(self.path(tag) + "/", local_dir.rstrip("/") + "/", recursive=True)

    # ------------------------------------------------------------------ writing
    def upload(self, local_path: str, *parts: str) -> None:
        """Upload one file and check the stored size (a truncated upload raises)."""
        remote = self.path(*parts)
        self.fs.put_file(local_path, remote)
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
            with self.fs.open(target, "w") as f:
                f.write(text)

    def remove_checkpoint(self, tag: str) -> None:
        """Delete a checkpoint folder, its marker first (an interrupted removal leaves an incomplete checkpoint,
        never a complete-looking damaged one)."""
        if not TAG_RE.match(tag):
            raise ValueError(f"refusing to remove {tag!r}: not a checkpoint folder name")
        if self.exists(tag, MARKER):
            self.fs.rm(self.path(tag, MARKER))
        if self.exists(tag):
            self.fs.rm(self.path(tag), recursive=True)
        self.refresh()
