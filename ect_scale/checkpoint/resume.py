"""Choosing the checkpoint to resume from (collective): newest complete one that passes verification, with a clear
message for every one skipped; materialised on local disk (downloaded from object storage) and converted to a
DeepSpeed universal checkpoint when the world size, ZeRO stage or precision changed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ect_scale.checkpoint.collective import all_gather_object, on_main, on_node_leader
from ect_scale.checkpoint.ds_io import convert_to_universal
from ect_scale.checkpoint.layout import (
    DS_TAG,
    DS_UNIVERSAL_TAG,
    MARKER,
    TRAINER_FILE,
    CheckpointError,
    Marker,
    RunSpec,
    config_diff,
)
from ect_scale.checkpoint.shards import RankFile
from ect_scale.checkpoint.storage import Destination, crc32_file
from ect_scale.config import CheckpointConfig
from ect_scale.runtime import dist


@dataclass
class ResumePlan:
    tag: str
    marker: Marker
    meta: dict  # trainer.json
    folder: str  # Local folder holding the checkpoint (the destination itself, or a downloaded copy).
    load_dir: str  # DeepSpeed's load_dir and tag.
    load_tag: str
    universal: bool  # Load through a universal checkpoint (another world size / ZeRO stage / precision).
    convert_sec: float = 0.0

    @property
    def saved_world_size(self) -> int:
        return int(self.meta["world_size"])


def _read_head(dest: Destination, tag: str) -> tuple[Optional[Marker], Optional[dict], Optional[str]]:
    """(marker, trainer.json, problem) of one checkpoint, read on rank 0."""
    try:
        marker = Marker.from_text(dest.read_text(tag, MARKER))
        meta = json.loads(dest.read_text(tag, TRAINER_FILE))
        return marker, meta, None
    except Exception as e:  # noqa: BLE001 - any unreadable head makes the checkpoint unusable
        return None, None, f"unreadable {MARKER} or {TRAINER_FILE} ({type(e).__name__}: {e})"


def check_config(meta: dict, spec: RunSpec, where: str) -> None:
    """Refuse to resume when a field in `Config.IMMUTABLE` changed, naming every difference."""
    diffs = config_diff(meta.get("immutable", {}), spec.immutable)
    if diffs:
        raise CheckpointError(
            f"{where} was written with a different configuration; these fields must not change when resuming: "
            + "; ".join(diffs)
            + ". Fix: resume with the checkpoint's values (see <run_dir>/config.yaml), or start "
            "a new run in another run_dir / checkpoint.dir (use tools/export.py + init: to start from its weights)"
        )
    saved, now = int(meta["zero_stage"]), spec.zero_stage
    family = lambda s: {0: "0", 1: "1/2", 2: "1/2", 3: "3"}[s]  # noqa: E731
    if family(saved) != family(now):
        raise CheckpointError(
            f"{where} was written with engine.zero_stage={saved}; resuming with engine.zero_stage={now} is not "
            "supported (stage 0 keeps no ZeRO partitions; DeepSpeed's universal checkpoints convert between stages "
            "1 and 2, and any world size, but not between stages 1/2 and 3). Fix: resume with "
            f"engine.zero_stage={saved} (at any world size), or export the weights (tools/export.py) and start a "
            "new run from them"
        )


def needs_universal(meta: dict, spec: RunSpec, world_size: int) -> bool:
    """A different partitioning needs DeepSpeed's universal format (stage 0 is replicated: any world size loads)."""
    if spec.zero_stage == 0:
        return False
    return (
        int(meta["world_size"]) != world_size
        or int(meta["zero_stage"]) != spec.zero_stage
        or meta["precision"] != spec.param_dtype
    )


def verify_files(folder: str, marker: Marker) -> list[str]:
    """Check sizes and CRC32s of the marker's files in a local folder; the work is split over ranks. A file the
    marker lists without a CRC32 (written by an older version with `checkpoint.checksum: false`) cannot be
    verified: its tensors must at least all be finite."""
    rank, world = dist.get_rank(), dist.get_world_size()
    problems = []
    for i, (rel, rec) in enumerate(sorted(marker.files.items())):
        if i % world != rank:
            continue
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            problems.append(f"{rel} is missing")
        elif os.path.getsize(path) != rec.size:
            problems.append(f"{rel} has {os.path.getsize(path)} bytes, expected {rec.size} (truncated?)")
        elif rec.crc32 is not None and crc32_file(path) != rec.crc32:
            problems.append(f"{rel} fails its CRC32 check (corrupted)")
        elif rec.crc32 is None and (bad := nonfinite_tensor(path)) is not None:
            problems.append(f"{rel} has no CRC32 and holds non-finite values in {bad} (corrupted)")
    return sorted(p for ps in all_gather_object(problems) for p in ps)


def nonfinite_tensor(path: str) -> Optional[str]:
    """The name of the first floating-point tensor with a NaN or an infinity in a checkpoint file (safetensors or
    a torch pickle), or None. An unreadable file names itself."""
    try:
        if path.endswith(".safetensors"):
            f = RankFile(path)
            named = ((k, f.tensor(k)) for k in sorted(f.keys))
        elif path.endswith(".pt"):
            named = _tensors(torch.load(path, map_location="cpu", weights_only=False, mmap=True))
        else:
            return None
        for name, t in named:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return name
    except Exception as e:  # noqa: BLE001 - damaged files raise anything
        return f"the whole file (unreadable: {type(e).__name__})"
    return None


def _tensors(obj, prefix: str = ""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}" if prefix else str(i))


def plan_resume(
    ccfg: CheckpointConfig, spec: RunSpec, dest: Destination, staging: str, log: Callable[[str], None]
) -> Optional[ResumePlan]:
    """The checkpoint to resume from, or None for a fresh start (collective)."""
    tags, complete = on_main(lambda: _scan(dest))
    if not ccfg.resume:
        if complete:
            raise CheckpointError(
                f"checkpoint.resume=false but {dest.url} already holds checkpoints {complete[-3:]} of an earlier run; "
                "saving next to them would mix two runs. Fix: use another run_dir or checkpoint.dir, delete them, or "
                "set checkpoint.resume=true"
            )
        return None
    newest = complete[-1] if complete else ""
    for t in tags:
        if t not in complete and t > newest:
            log(f"ignoring {dest.display(t)}: no {MARKER} marker (the save was interrupted)")
    skipped = []
    for tag in reversed(complete):
        marker, meta, problem = on_main(lambda tag=tag: _read_head(dest, tag))
        if problem is None:
            check_config(meta, spec, dest.display(tag))
            problem = _materialise_and_verify(dest, tag, marker, staging, log)
        if problem is None:
            return _finish_plan(ccfg, spec, dest, tag, marker, meta, staging, log)
        skipped.append(f"{tag}: {problem}")
        log(f"WARNING: cannot resume from {dest.display(tag)}: {problem}. Falling back to the previous checkpoint")
    if skipped:
        raise CheckpointError(
            f"no usable checkpoint in {dest.url}; every complete one failed verification ({'; '.join(skipped)}). Fix: "
            "restore the damaged files, or move the checkpoints aside to start over"
        )
    if tags:
        log(f"no complete checkpoint in {dest.url} (only interrupted saves); starting from scratch")
    return None


def _scan(dest: Destination) -> tuple[list[str], list[str]]:
    tags = dest.tags()
    return tags, [t for t in tags if dest.is_complete(t)]


def local_copy(dest: Destination, staging: str, tag: str) -> str:
    return dest.path(tag) if dest.is_local else os.path.join(staging, "load", tag)


def _materialise_and_verify(
    dest: Destination, tag: str, marker: Marker, staging: str, log: Callable[[str], None]
) -> Optional[str]:
    folder = local_copy(dest, staging, tag)
    if not dest.is_local:
        errors = [e for e in on_node_leader(lambda: dest.download_tree(tag, folder)) if e]
        if errors:
            return f"download to {folder} failed ({errors[0]})"
    unverifiable = sum(rec.crc32 is None for rec in marker.files.values())
    if unverifiable:
        log(
            f"WARNING: {dest.display(tag)} was written without CRC32s (checkpoint.checksum: false); {unverifiable} "
            "files cannot be verified, only checked for non-finite values"
        )
    problems = verify_files(folder, marker)
    if problems:
        return "; ".join(problems[:4]) + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else "")
    return None


def _finish_plan(
    ccfg: CheckpointConfig,
    spec: RunSpec,
    dest: Destination,
    tag: str,
    marker: Marker,
    meta: dict,
    staging: str,
    log: Callable[[str], None],
) -> ResumePlan:
    folder = local_copy(dest, staging, tag)
    world = dist.get_world_size()
    plan = ResumePlan(tag, marker, meta, folder, folder, DS_TAG, needs_universal(meta, spec, world))
    if not plan.universal:
        return plan
    out_root = os.path.join(staging, "universal", tag)
    out = os.path.join(out_root, DS_UNIVERSAL_TAG)
    log(
        f"{tag} was written by {meta['world_size']} ranks with ZeRO-{meta['zero_stage']} {meta['precision']}; "
        f"this run has {world} ranks with ZeRO-{spec.zero_stage} {spec.precision}: converting it to a "
        f"DeepSpeed universal checkpoint in {out} (node-local, {ccfg.convert_workers} workers)"
    )
    secs = []

    def convert() -> None:
        shutil.rmtree(out_root, ignore_errors=True)
        os.makedirs(out_root, exist_ok=True)
        secs.append(convert_to_universal(os.path.join(folder, DS_TAG), out, ccfg.convert_workers))

    errors = [e for e in on_node_leader(convert) if e]
    if errors:
        raise CheckpointError(
            f"{dest.display(tag)}: {errors[0]}. Fix: resume at the checkpoint's world size "
            f"({meta['world_size']} ranks) and ZeRO stage ({meta['zero_stage']}) and precision "
            f"({meta['precision']})"
        )
    plan.load_dir, plan.load_tag = out_root, DS_UNIVERSAL_TAG
    plan.convert_sec = secs[0] if secs else 0.0
    return plan
