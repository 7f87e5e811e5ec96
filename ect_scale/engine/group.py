"""Joining the training process group through DeepSpeed, whose comm layer wraps torch.distributed and must own
the group. Evaluation and tools join with plain torch.distributed instead (`runtime.dist.init_from_env`).

Launchers (deepspeed, torchrun, SLURM srun) set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. A single
process without MASTER_PORT lets the rendezvous store bind any free port (MASTER_PORT=0), so several single-process
runs can share a machine; multi-process launchers need a distinct `--master_port` per concurrent run.
"""

from __future__ import annotations

import datetime
import importlib
import os
from typing import Optional

import torch

from ect_scale.runtime import dist, peers


def init_process_group(backend: str = "auto", timeout_min: Optional[float] = None) -> None:
    """Initialise the default process group from the environment (NCCL on GPUs, gloo on CPUs; no-op if it exists).
    `timeout_min` defaults to $ECT_DIST_TIMEOUT_MIN or 60 minutes."""
    if dist.is_initialized():
        return
    dev = dist.device()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.env_world_size() == 1:  # Port 0: the store binds a free port (no clash between runs on one machine).
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "0")
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"))
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    minutes = timeout_min if timeout_min is not None else float(os.environ.get("ECT_DIST_TIMEOUT_MIN", "60"))
    import deepspeed

    if dev.type == "cpu":
        _skip_shm_inference_op()
    deepspeed.init_distributed(
        dist_backend=backend,
        timeout=datetime.timedelta(minutes=minutes),
        rank=dist.env_rank(),
        world_size=dist.env_world_size(),
    )
    peers.start(dist.get_rank(), dist.get_world_size())


def _skip_shm_inference_op() -> None:
    """On CPUs DeepSpeed JIT-compiles a shared-memory all-reduce (~60 s on a fresh machine) that only its
    `inference_all_reduce` uses; training never calls it, so do not build it (deepspeed==0.19.8, comm/torch.py)."""
    ds_torch = importlib.import_module("deepspeed.comm.torch")  # Not `import ... as`: deepspeed.comm.torch is shadowed.
    if hasattr(ds_torch, "build_shm_op"):
        ds_torch.build_shm_op = lambda: None
