"""Names and small pure functions of the checkpoint layout (see docs/checkpoints.md).

<dest>/                         checkpoint.dir: a local/shared path or an fsspec URL (s3://bucket/run/checkpoints)
  ckpt-000002000000/            one checkpoint, named by images seen (12 digits)
    ds/...                      DeepSpeed's files (engine.save_checkpoint(<dest>/<tag>, tag="ds")): model states
                                and per-rank ZeRO optimizer partitions
    zero_to_fp32.py             DeepSpeed's recovery script (cannot read bf16 ZeRO-1 files: use tools/export.py)
    rank-00000.safetensors      per-rank trainer state: EMA shards, fp32 master shards, fragment table, data-stream
                                position and RNG states (rank 0 also holds the module buffers)
    trainer.json                images seen, step counters, world size, ZeRO stage, the immutable config fields
    COMPLETE                    written last, by rank 0, after every rank's files are in place: file sizes + CRC32
  latest                        the newest complete tag (informational; resume trusts only COMPLETE markers)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Optional

from ect_scale.config import immutable_fields, to_dict
from ect_scale.runtime.errors import UserError

TAG_RE = re.compile(r"^ckpt-(\d{12})$")
DS_TAG = "ds"  # DeepSpeed's tag (sub-folder) inside a checkpoint.
DS_UNIVERSAL_TAG = "ds_universal"  # ds_to_universal output next to it (in the staging area).
MARKER = "COMPLETE"
TRAINER_FILE = "trainer.json"
LATEST = "latest"
FORMAT = "ect_scale-checkpoint/1"


@dataclass(frozen=True)
class RunSpec:
    """What a checkpoint records about the run that writes it, and what a resume checks against."""

    immutable: dict  # Config fields that must not change on resume ("a.b" -> value; `config.immutable_fields`).
    zero_stage: int  # engine.zero_stage
    param_dtype: str  # engine.resolved_param_dtype(): the parameter copy DeepSpeed partitions ("bf16" / "fp32").
    precision: str  # engine.precision (for messages)
    network: dict  # The network section (to_dict), stored for tools that read a checkpoint.
    ect: dict  # The objective section (to_dict).

    @classmethod
    def of(cls, cfg) -> "RunSpec":
        """The spec of a resolved `config.Config`."""
        return cls(
            immutable_fields(cfg),
            cfg.engine.zero_stage,
            cfg.engine.resolved_param_dtype(),
            cfg.engine.precision,
            to_dict(cfg.network),
            to_dict(cfg.ect),
        )


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be written, found, verified or resumed. The message names the cause and the fix."""


def tag_for(nimg: int) -> str:
    return f"ckpt-{nimg:012d}"


def nimg_of(tag: str) -> Optional[int]:
    m = TAG_RE.match(tag)
    return int(m.group(1)) if m else None


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.safetensors"


@dataclass
class FileRecord:
    path: str  # Relative to the checkpoint folder, '/'-separated.
    size: int  # Bytes.
    crc32: Optional[int] = None
    rank: int = 0  # The rank that wrote it.

    def to_json(self) -> dict:
        return {"size": self.size, "crc32": self.crc32, "rank": self.rank}


@dataclass
class Marker:
    """Contents of COMPLETE: the index of a finished checkpoint."""

    tag: str
    nimg: int
    world_size: int
    files: dict[str, FileRecord] = field(default_factory=dict)
    save_sec: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_text(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "tag": self.tag,
                "nimg": self.nimg,
                "world_size": self.world_size,
                "save_sec": round(self.save_sec, 3),
                "total_bytes": self.total_bytes,
                "files": {p: r.to_json() for p, r in sorted(self.files.items())},
            },
            indent=1,
        )

    @staticmethod
    def from_text(text: str) -> "Marker":
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, expected {FORMAT!r}")
        files = {p: FileRecord(p, int(r["size"]), r.get("crc32"), int(r.get("rank", 0))) for p, r in d["files"].items()}
        return Marker(d["tag"], int(d["nimg"]), int(d["world_size"]), files, float(d.get("save_sec", 0.0)))


def retained(nimgs: list[int], keep_last: int, keep_every_nimg: int) -> set[int]:
    """Checkpoints to keep: the newest `keep_last`, plus, for every k >= 1, the first checkpoint at or after
    k * keep_every_nimg images (stable: a later save never displaces it)."""
    ordered = sorted(set(nimgs))
    keep = set(ordered[-keep_last:]) if keep_last > 0 else set()
    if keep_every_nimg > 0:
        buckets: set[int] = set()
        for n in ordered:
            k = n // keep_every_nimg
            if k >= 1 and k not in buckets:
                buckets.add(k)
                keep.add(n)
    return keep


def config_diff(saved: dict, now: dict) -> list[str]:
    """'field: checkpoint -> now' for every immutable config field that differs (or exists on one side only).
    Values are compared in their JSON form (a checkpoint stores tuples as lists)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a = json.dumps(saved[key], sort_keys=True) if key in saved else "(absent)"
        b = json.dumps(now[key], sort_keys=True) if key in now else "(absent)"
        if a != b:
            out.append(f"{key}: {a} (checkpoint) -> {b} (now)")
    return out
