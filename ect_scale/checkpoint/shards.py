"""Per-rank trainer-state files: EMA shards, fp32 master shards and the table that places them in the network.

DeepSpeed keeps only rank 0's `client_state` under ZeRO-1/2, so everything per-rank lives in
`rank-<r>.safetensors` (no pickles). Tensors:
    master.<i>            this rank's fp32 master partitions (flat, with ZeRO padding), i = flat group index
    ema.<profile>.<i>     the EMA shadows, same layout (`ect_scale.engine.ema.EMATracker`)
    buffer.<name>         module buffers (rank 0 only)
    rng.torch / rng.cuda  RNG states
Metadata `ect_scale.state` (JSON): rank, world_size, zero_stage, `fragments` = [[name, flat, offset, start, numel]]
(elements [offset, offset+numel) of flat `flat` hold elements [start, start+numel) of the flattened parameter),
`param_shapes`, EMA profiles and images seen, the data-stream state and the Python/NumPy RNG states.

Because the table is stored, any set of rank files can be consolidated into full tensors without DeepSpeed
(`consolidate`): this re-slices EMAs at another world size and lets `tools/export.py` write network files.
"""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any, Iterable, Optional

import numpy as np
import torch
from safetensors import safe_open

from ect_scale.checkpoint.layout import CheckpointError, rank_file
from ect_scale.checkpoint.parts import Checkpointable
from ect_scale.engine.master import MasterWeights, storage_key

FORMAT = "ect_scale-rank-state/1"


def fragment_table(master: MasterWeights) -> list[list]:
    """[[name, flat index, offset in flat, start in parameter, numel]] for this rank's fragments."""
    flats = master.flats()
    index = {storage_key(t): i for i, t in enumerate(flats)}
    rows = []
    for f in master.fragments:
        i = index[f.flat_key]
        base = flats[i]
        offset = (f.view.data_ptr() - base.data_ptr()) // base.element_size()
        rows.append([f.name, i, int(offset), int(f.start), int(f.view.numel())])
    return rows


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON) of the torch / CUDA / Python / NumPy generators of this process."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    py = random.getstate()
    npy = np.random.get_state()
    return tensors, {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], saved: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    py = saved["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = saved["numpy"]
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))


def rank_state(parts: Checkpointable, rank: int, world_size: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This rank's trainer state (see the module docstring) as (live tensors, safetensors metadata). The tensors are
    the training state itself, not copies: stage them (`staging.HostStager`) or write them before the next step."""
    master, ema = parts.engine.master, parts.ema
    # Without ZeRO every rank holds the same full tensors: rank 0 writes them, the others only their own state.
    shards = rank == 0 or master.zero_stage != 0
    flats = master.flats() if shards else []
    tensors = {f"master.{i}": t.detach().reshape(-1) for i, t in enumerate(flats)}
    for profile, shadows in ema.shadows.items() if shards else ():
        tensors.update({f"ema.{profile}.{i}": t.detach().reshape(-1) for i, t in enumerate(shadows)})
    if rank == 0:
        for name, b in parts.engine.module.named_buffers():
            tensors[f"buffer.{name}"] = b.detach()
    rng_tensors, rng_json = rng_state()
    tensors.update(rng_tensors)
    state = {
        "rank": rank,
        "world_size": world_size,
        "zero_stage": master.zero_stage,
        "fragments": fragment_table(master) if shards else [],
        "num_flats": len(flats),
        "param_shapes": {k: list(v) for k, v in parts.engine.param_shapes.items()},
        "ema_profiles": list(ema.profiles),
        "ema_nimg": int(ema.nimg),
        "stream": parts.stream.state_dict(),
        "rng": rng_json,
    }
    try:
        meta = {"ect_scale.format": FORMAT, "ect_scale.state": json.dumps(state)}
    except TypeError as e:
        raise CheckpointError(
            f"the data stream's state_dict() is not JSON-serialisable ({e}). Fix: return plain "
            "dicts/lists/numbers/strings from the stream's state_dict()"
        ) from None
    return tensors, meta


def write_rank_file(path: str, parts: Checkpointable, rank: int, world_size: int) -> None:
    """This rank's state, written now (local path; raises OSError on a failed write)."""
    write_safetensors(path, *rank_state(parts, rank, world_size))


_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_CHUNK = 64 << 20


def _raw_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B") if flat.numel() else memoryview(b"")


def write_safetensors(path_or_file, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file (the format of huggingface/safetensors: 8-byte little-endian header length, a JSON header
    of dtype / shape / data_offsets per tensor plus `__metadata__`, padded with spaces to 8 bytes, then the raw
    little-endian data), streamed from host tensors in 64 MiB writes, which release the GIL, so a background writer
    does not stall the training thread and no second copy of the data is made. Takes a path or a binary file."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise CheckpointError(f"cannot write {name} of dtype {t.dtype} to a safetensors file")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-(8 + len(head)) % 8)
    with open(path_or_file, "wb") if isinstance(path_or_file, str) else contextlib.nullcontext(path_or_file) as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for t in tensors.values():
            data = _raw_bytes(t)
            for i in range(0, len(data), _CHUNK):
                f.write(data[i : i + _CHUNK])


class RankFile:
    """Lazy reader of one rank file (safetensors reads only the slices asked for)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._f = safe_open(path, framework="pt", device="cpu")
            meta = self._f.metadata() or {}
        except Exception as e:  # safetensors raises several types on damaged files
            raise CheckpointError(f"{path}: unreadable trainer-state file ({e})") from None
        if meta.get("ect_scale.format") != FORMAT:
            raise CheckpointError(f"{path}: not an ect_scale rank-state file (format {meta.get('ect_scale.format')!r})")
        self.state: dict = json.loads(meta["ect_scale.state"])
        self.keys = set(self._f.keys())

    def tensor(self, name: str) -> torch.Tensor:
        return self._f.get_tensor(name)

    def flats(self, prefix: str) -> list[torch.Tensor]:
        """`master` or `ema.<profile>`: the flat tensors in group order."""
        return [self.tensor(f"{prefix}.{i}") for i in range(int(self.state["num_flats"]))]

    def piece(self, name: str, offset: int, numel: int) -> torch.Tensor:
        return self._f.get_slice(name)[offset : offset + numel]

    def buffers(self) -> dict[str, torch.Tensor]:
        return {k[len("buffer.") :]: self.tensor(k) for k in sorted(self.keys) if k.startswith("buffer.")}

    def rng(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {k: self.tensor(k) for k in self.keys if k.startswith("rng.")}, self.state["rng"]


def consolidate(
    files: list[RankFile], prefix: str, names: Optional[Iterable[str]] = None, reshape: bool = True
) -> dict[str, torch.Tensor]:
    """Full fp32 tensors of `prefix` (`master` or `ema.<profile>`) assembled from every rank's file, for `names`
    (default: all parameters). Raises if some element is covered by no rank (a missing or foreign rank file)."""
    shapes = files[0].state["param_shapes"]
    wanted = list(shapes) if names is None else list(names)
    full = {n: torch.zeros(int(np.prod(shapes[n], dtype=np.int64)), dtype=torch.float32) for n in wanted}
    covered = dict.fromkeys(wanted, 0)
    for rf in files:
        for name, flat, offset, start, numel in rf.state["fragments"]:
            if name in full:
                full[name][start : start + numel] = rf.piece(f"{prefix}.{flat}", offset, numel).to(torch.float32)
                covered[name] += numel
    short = [n for n in wanted if covered[n] != full[n].numel()]
    if short:
        raise CheckpointError(
            f"{prefix}: rank files {[rf.path for rf in files][:3]}... cover {covered[short[0]]} of "
            f"{full[short[0]].numel()} elements of {short[0]} ({len(short)} parameters incomplete): "
            "a rank file is missing or belongs to another checkpoint"
        )
    return {n: t.view(shapes[n]) if reshape else t for n, t in full.items()}


def open_rank_files(folder: str, world_size: int) -> list[RankFile]:
    return [RankFile(f"{folder}/{rank_file(r)}") for r in range(world_size)]


def network_state(files: list[RankFile], prefix: str) -> dict[str, torch.Tensor]:
    """A full network state dict (parameters with their original shapes + buffers) of `master` or an EMA."""
    state: dict[str, Any] = consolidate(files, prefix)
    state.update(files[0].buffers())
    return state
