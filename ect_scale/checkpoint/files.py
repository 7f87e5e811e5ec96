"""The files of one save, as captured at the step boundary and written later (by the background writer, or at once).

A `FileWrite` is one file of a checkpoint folder: DeepSpeed's pickles (`torch.save` of a staged state dict), a rank's
trainer-state safetensors file, `trainer.json`, or a copy of DeepSpeed's recovery script. A `WriteLog` collects the
paths a rank wrote and the first error it met; a failed write is recorded, never raised, so that every rank still
reaches the collective decision about the save.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ect_scale.checkpoint.shards import write_safetensors


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

    @property
    def nbytes_hint(self) -> int:
        """Tensor bytes in the payload (for progress messages; 0 if unknown)."""
        if self.kind == "safetensors":
            return sum(t.numel() * t.element_size() for t in self.payload[0].values())
        return 0


def write_file(folder: str, fw: FileWrite) -> str:
    """Write one file under `folder`; returns its path. Raises on failure (OSError, RuntimeError, ...)."""
    path = os.path.join(folder, *fw.rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if fw.kind == "torch":
        torch.save(fw.payload, path, _use_new_zipfile_serialization=fw.zipfile)
    elif fw.kind == "safetensors":
        write_safetensors(path, *fw.payload)
    elif fw.kind == "text":
        with open(path, "w") as f:
            f.write(fw.payload)
    elif fw.kind == "copy":
        shutil.copyfile(fw.payload, path)
    else:
        raise ValueError(f"unknown file kind {fw.kind!r}")
    return path
