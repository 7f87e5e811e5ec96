"""Consolidated networks from a sharded checkpoint, without DeepSpeed: the online fp32 weights or any EMA, read
from the per-rank trainer-state files (`shards.py`) of a local or remote checkpoint.

    src = find_checkpoint("runs/ect-s")                  # a run dir, a checkpoints root or one checkpoint folder
    state, config, meta = consolidated_network(src, "power-0.050")
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

from ect_scale.checkpoint.layout import MARKER, TRAINER_FILE, CheckpointError, Marker, rank_file
from ect_scale.checkpoint.resume import nonfinite_tensor
from ect_scale.checkpoint.shards import network_state, open_rank_files
from ect_scale.checkpoint.storage import Destination, crc32_file
from ect_scale.config import NetworkConfig, from_dict

ONLINE = "online"


@dataclass
class CheckpointRef:
    dest: Destination
    tag: str

    def display(self) -> str:
        return self.dest.display(self.tag)


def find_checkpoint(src: str, tag: Optional[str] = None) -> CheckpointRef:
    """Resolve `src` (one checkpoint folder, a checkpoints root, or a run dir holding `checkpoints/`) to a complete
    checkpoint: the one named `tag`, or the newest complete one."""
    src = src.rstrip("/")
    head, _, last = src.rpartition("/")
    probe = Destination(head) if head else None
    if probe is not None and last.startswith("ckpt-") and probe.is_complete(last):
        return CheckpointRef(probe, last)
    for root in (src, src + "/checkpoints"):
        dest = Destination(root)
        complete = [t for t in dest.tags() if dest.is_complete(t)]
        if tag is not None:
            if tag in complete:
                return CheckpointRef(dest, tag)
            continue
        if complete:
            return CheckpointRef(dest, complete[-1])
    what = f"checkpoint {tag}" if tag else "complete checkpoint"
    raise CheckpointError(
        f"no {what} found at {src} (looked for ckpt-* folders with a {MARKER} marker in it and in "
        f"{src}/checkpoints). Fix: pass a run dir, checkpoint.dir, or one ckpt-* folder"
    )


def _fetch(ref: CheckpointRef, marker: Marker, workdir: str) -> str:
    """A local folder with the checkpoint's trainer-state files (downloaded from object storage if needed),
    verified against the marker."""
    if ref.dest.is_local:
        folder = ref.dest.path(ref.tag)
    else:
        folder = workdir
        for rel in [TRAINER_FILE] + [rank_file(r) for r in range(marker.world_size)]:
            ref.dest.fs.get_file(ref.dest.path(ref.tag, rel), os.path.join(folder, rel))
    for r in range(marker.world_size):
        rec = marker.files.get(rank_file(r))
        path = os.path.join(folder, rank_file(r))
        if (
            rec is None
            or not os.path.isfile(path)
            or os.path.getsize(path) != rec.size
            or (rec.crc32 is not None and crc32_file(path) != rec.crc32)
            or (rec.crc32 is None and nonfinite_tensor(path) is not None)  # Written without checksums.
        ):
            raise CheckpointError(
                f"{ref.display()}/{rank_file(r)} is missing or damaged (size/CRC32 differ from "
                f"{MARKER}). Fix: export from an earlier checkpoint (--tag)"
            )
    return folder


def consolidated_network(ref: CheckpointRef, what: str = ONLINE) -> tuple[dict, NetworkConfig, dict]:
    """(state_dict, NetworkConfig, meta) of the online weights (`online`) or an EMA profile (e.g. `power-0.050`)."""
    marker = Marker.from_text(ref.dest.read_text(ref.tag, MARKER))
    meta = json.loads(ref.dest.read_text(ref.tag, TRAINER_FILE))
    profiles = list(meta["ema_profiles"])
    if what != ONLINE and what not in profiles:
        raise CheckpointError(
            f"{ref.display()} has no EMA {what!r}; it holds {[ONLINE] + profiles}. Fix: pick one of those"
        )
    with tempfile.TemporaryDirectory(prefix="ect_export_") as tmp:
        folder = _fetch(ref, marker, tmp)
        files = open_rank_files(folder, marker.world_size)
        state = network_state(files, "master" if what == ONLINE else f"ema.{what}")
    config = from_dict(NetworkConfig, meta["network"], "network")
    out_meta = {
        "source": "ect_scale checkpoint",
        "checkpoint": ref.display(),
        "nimg": int(meta["nimg"]),
        "ema": None if what == ONLINE else what,
        "encoder": meta.get("encoder"),
        "config": meta.get("ect"),
    }
    return state, config, out_meta


def available(ref: CheckpointRef) -> list[str]:
    meta = json.loads(ref.dest.read_text(ref.tag, TRAINER_FILE))
    return [ONLINE] + list(meta["ema_profiles"])
