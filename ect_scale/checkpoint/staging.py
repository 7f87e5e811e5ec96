"""Host copies of a save's tensors: the only part of an asynchronous checkpoint that blocks training.

What a save writes (DeepSpeed's state dicts, the per-rank trainer state) is a nest of dicts and lists holding
tensors that the next optimizer step overwrites. `HostStager.stage(obj)` returns the same nest with every tensor
replaced by a view of a host copy of its whole storage. `torch.save` writes whole storages too, so views and shared
storage are kept and a file written from the copies loads exactly like one written from the live tensors. A
storage met twice in one save (the fp32 master partitions are in DeepSpeed's optimizer state and in the trainer
state) is copied once.

Buffers are kept between saves (a pool by exact size; `release` hands them back once the files are written). On
CUDA those of 1 MiB and more are anonymous memory mappings page-locked in place with cudaHostRegister (torch's
pinned allocator would round each size up to a power of two; a mapping of its own means no locked page is shared
with another allocation), and their copies are queued on the current stream, then one synchronisation: after
`finish` the host copies hold the state of the step boundary and training may overwrite the originals.

Other leaves of the nest are copied too (a pickle round trip), so a later change of a DeepSpeed attribute cannot
reach a file; a tensor hidden inside such an object is refused rather than written later at another step.
"""

from __future__ import annotations

import copy
import enum
import io
import mmap
import pickle
import time
from typing import Any

import torch

from ect_scale.checkpoint.layout import CheckpointError

PIN_MIN_BYTES = 1 << 20  # Smaller storages (step counters, RNG states, buffers) are copied through pageable memory.
_PLAIN = (int, float, complex, str, bytes, bool, type(None), torch.dtype, torch.device, torch.Size, enum.Enum)


class _NoTensorPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, (torch.Tensor, torch.UntypedStorage, torch.TypedStorage)):
            raise CheckpointError(
                "a tensor inside a non-container object of a checkpoint state cannot be copied for a background "
                "save. Fix: set checkpoint.async_save=false"
            )
        return None


def _copy_leaf(obj: Any) -> Any:
    if isinstance(obj, _PLAIN):
        return obj
    buf = io.BytesIO()
    _NoTensorPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return pickle.loads(buf.getvalue())


def _register_pinned(buf: torch.Tensor) -> None:
    rc = torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), buf.numel(), 0)
    if int(rc) != 0:
        raise CheckpointError(
            f"cannot page-lock {buf.numel() / 2**30:.2f} GiB of host memory for the checkpoint copy (CUDA error "
            f"{int(rc)}). Fix: free host memory, or set checkpoint.async_save=false"
        )


def _unregister_pinned(buf: torch.Tensor) -> None:
    torch.cuda.cudart().cudaHostUnregister(buf.data_ptr())


class HostStager:
    """Copies of tensors in host memory for one save at a time (see the module docstring)."""

    def __init__(self, copy_tensors: bool = True, keep: bool = True, pin: bool = False):
        self.copy_tensors = copy_tensors  # False: stage() passes tensors through (a synchronous save writes them now).
        self.keep = keep  # Keep buffers for the next save (asynchronous saves) instead of freeing them.
        self.pin = pin and torch.cuda.is_available()  # Page-lock buffers; copies from CUDA run asynchronously.
        self._pool: dict[int, list[torch.Tensor]] = {}  # nbytes -> buffers not in use.
        self._in_use: list[torch.Tensor] = []
        self._seen: dict[tuple, torch.UntypedStorage] = {}  # (device, pointer, nbytes) -> host storage, this save.
        self._pending_cuda = False
        self.copied_bytes = 0  # This save: bytes copied to host memory.
        self.new_bytes = 0  # This save: bytes of newly allocated buffers.
        self.alloc_sec = 0.0  # This save: time spent allocating (and page-locking) new buffers.

    @property
    def held_bytes(self) -> int:
        """Host memory held by the stager now (buffers in use and pooled)."""
        return sum(b.numel() for b in self._in_use) + sum(b.numel() for bs in self._pool.values() for b in bs)

    def begin(self) -> None:
        self._seen = {}
        self.copied_bytes = self.new_bytes = 0
        self.alloc_sec = 0.0

    def stage(self, obj: Any) -> Any:
        """`obj` with every tensor replaced by a host copy (containers rebuilt, other leaves copied)."""
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj) if self.copy_tensors else obj
        if isinstance(obj, torch.Size):
            return obj
        if isinstance(obj, dict):
            out = copy.copy(obj)
            for k, v in obj.items():
                out[k] = self.stage(v)
            return out
        if isinstance(obj, list):
            return type(obj)(self.stage(v) for v in obj) if type(obj) is list else self._rebuild_list(obj)
        if isinstance(obj, tuple):
            items = [self.stage(v) for v in obj]
            return tuple(items) if type(obj) is tuple else type(obj)(*items)  # namedtuple
        if isinstance(obj, (set, frozenset)):
            return type(obj)(_copy_leaf(v) for v in obj)
        return _copy_leaf(obj)

    def _rebuild_list(self, obj: list) -> list:
        out = copy.copy(obj)
        out[:] = [self.stage(v) for v in obj]
        return out

    def finish(self) -> None:
        """Wait for the copies queued on the GPU (after this the originals may change)."""
        if self._pending_cuda:
            torch.cuda.current_stream().synchronize()
            self._pending_cuda = False

    def release(self) -> None:
        """The files of the save are written: its buffers may be reused (or are freed)."""
        if self.keep:
            for buf in self._in_use:
                self._pool.setdefault(buf.numel(), []).append(buf)
        else:
            for buf in self._in_use:
                if self._pinned(buf.numel()):
                    _unregister_pinned(buf)
        self._in_use = []
        self._seen = {}

    def close(self) -> None:
        self.release()
        for bufs in self._pool.values():
            for buf in bufs:
                if self._pinned(buf.numel()):
                    _unregister_pinned(buf)
        self._pool = {}

    # ------------------------------------------------------------------ tensors
    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        if t.layout != torch.strided or t.is_quantized:
            raise CheckpointError(
                f"cannot copy a {t.layout} tensor for a background save. Fix: set checkpoint.async_save=false"
            )
        host = self._host_storage(t.detach())
        view = torch.empty(0, dtype=t.dtype).set_(host, t.storage_offset(), t.size(), t.stride())
        if isinstance(t, torch.nn.Parameter):
            return torch.nn.Parameter(view, requires_grad=t.requires_grad)
        return view

    def _host_storage(self, t: torch.Tensor) -> torch.UntypedStorage:
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        key = (str(t.device), storage.data_ptr(), nbytes)
        host = self._seen.get(key)
        if host is None:
            buf = self._buffer(nbytes)
            if nbytes:
                src = torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage)
                asynchronous = self._pinned(nbytes) and t.is_cuda
                buf.copy_(src, non_blocking=asynchronous)
                self._pending_cuda |= asynchronous
            self.copied_bytes += nbytes
            host = buf.untyped_storage()
            self._seen[key] = host
        return host

    def _buffer(self, nbytes: int) -> torch.Tensor:
        free = self._pool.get(nbytes)
        if free:
            buf = free.pop()
        else:
            t0 = time.perf_counter()
            if self._pinned(nbytes):  # Its own pages (an anonymous mapping): nothing else shares a locked page.
                buf = torch.frombuffer(mmap.mmap(-1, nbytes), dtype=torch.uint8)
                _register_pinned(buf)
            else:
                buf = torch.empty(nbytes, dtype=torch.uint8)
            self.alloc_sec += time.perf_counter() - t0
            self.new_bytes += nbytes
        self._in_use.append(buf)
        return buf

    def _pinned(self, nbytes: int) -> bool:
        return self.pin and nbytes >= PIN_MIN_BYTES
