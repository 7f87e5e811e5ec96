"""The files of one save, as captured at the step boundary and written later (by the background writer, or at once).

A `FileWrite` is one file of a checkpoint folder: DeepSpeed's pickles (`torch.save` of a staged state dict), a rank's
trainer-state safetensors file, `trainer.json`, or a copy of DeepSpeed's recovery script. A `WriteLog` collects the
paths a rank wrote and the first error it met; a failed write is recorded, never raised, so that every rank still
reaches the collective decision about the save.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ect_scale.checkpoint.shards import write_safetensors
from ect_scale.checkpoint.storage import CHUNK


@dataclass
class WriteLog:
    """Files one rank wrote during a save, and the first error it met."""

    paths: list[str] = field(default_factory=list)
    error: Optional[str] = None

    def fail(self, what: str, e: BaseException) -> None:
        if self.error is None:
            self.error = f"{what}: {type(e).__name__}: {e}"


@dataclass
class FileWrite:
    rel: str  # Path inside the checkpoint folder, '/'-separated.
    kind: str  # "torch" | "safetensors" | "text" | "copy"
    payload: Any  # Staged state dict | (tensors, metadata) | str | source path.
    zipfile: bool = True  # torch.save's _use_new_zipfile_serialization (DeepSpeed's checkpoint_serialization).


class _Checksummed(io.RawIOBase):
    """A binary file that keeps the CRC32 and size of what went through it (no second read of the file)."""

    def __init__(self, f):
        self.f, self.crc, self.size = f, 0, 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.crc = zlib.crc32(b, self.crc)  # Releases the GIL for large buffers, as the write does.
        n = self.f.write(b)
        self.size += n
        return n


def write_file(folder: str, fw: FileWrite) -> tuple[str, int, int]:
    """Write one file under `folder`; returns (path, size, CRC32 of the bytes written). Raises on failure
    (OSError, RuntimeError, ...)."""
    path = os.path.join(folder, *fw.rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as raw:
        f = _Checksummed(raw)
        if fw.kind == "torch":
            torch.save(fw.payload, f, _use_new_zipfile_serialization=fw.zipfile)
        elif fw.kind == "safetensors":
            write_safetensors(f, *fw.payload)
        elif fw.kind == "text":
            f.write(fw.payload.encode())
        elif fw.kind == "copy":
            with open(fw.payload, "rb") as src:
                while chunk := src.read(CHUNK):
                    f.write(chunk)
        else:
            raise ValueError(f"unknown file kind {fw.kind!r}")
    return path, f.size, f.crc
