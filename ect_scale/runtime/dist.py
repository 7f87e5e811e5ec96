"""Process-group facade: safe to call without a process group (single process = rank 0 of 1).

Launchers (deepspeed, torchrun, SLURM srun) set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; the
deepspeed launcher may instead pass `--local_rank`, which `launchers/train.py` tolerates. `init()` picks NCCL on
GPUs and gloo on CPUs. Rank-0-only side effects are decided here (`is_main`), never at call sites.

A single process without MASTER_PORT lets the rendezvous store bind any free port (MASTER_PORT=0), so several
single-process runs can share a machine; multi-process launchers need a distinct `--master_port` per concurrent run.
Entry points that opted in (`ect_scale.runtime.entry`) watch for failed peers once the group is up
(`ect_scale.runtime.peers`).
Training joins the group through DeepSpeed (`ect_scale.engine.group.init_process_group`); evaluation and tools
through plain torch.distributed (`init_from_env`). This module never imports deepspeed.
"""

from __future__ import annotations

import datetime
import os
from typing import Optional

import torch
import torch.distributed as tdist

from ect_scale.runtime import peers


def _env_int(*names: str, default: int) -> int:
    for n in names:
        if os.environ.get(n) not in (None, ""):
            return int(os.environ[n])
    return default


def env_rank() -> int:
    return _env_int("RANK", "SLURM_PROCID", default=0)


def env_world_size() -> int:
    return _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)


def env_local_rank() -> int:
    return _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return tdist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return get_rank() == 0


def device() -> torch.device:
    """This rank's compute device: cuda:<local_rank> when CUDA is usable, else cpu."""
    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu":
        return torch.device("cuda", env_local_rank() % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def init_from_env(device: str = "auto", timeout_min: float = 60.0) -> torch.device:
    """Join the process group described by torchrun/deepspeed variables with plain torch.distributed (no
    DeepSpeed import: evaluation and tools use this); return the device. Single process: no group is created."""
    local_rank = env_local_rank()
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if env_world_size() > 1 and not is_initialized():
        kwargs = dict(backend="nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=timeout_min))
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        tdist.init_process_group(**kwargs)
        peers.start(get_rank(), get_world_size())
    return dev


def shutdown(wait: bool = True) -> None:
    """Leave the process group (after a barrier unless `wait=False`, e.g. when exiting on an error)."""
    peers.stop()  # Before the barrier: ranks that leave normally must not look like failed peers.
    if is_initialized():
        if wait:
            barrier()
        tdist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        tdist.barrier()


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum/max/min); identity without a process group."""
    if is_initialized() and get_world_size() > 1:
        ops = {"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX, "min": tdist.ReduceOp.MIN}
        tdist.all_reduce(t, op=ops[op])
    return t


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_(t, "sum")


def any_true(flag: bool, device_: Optional[torch.device] = None) -> bool:
    """True on every rank if `flag` is true on any rank (a collective)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device_ or device())
    return bool(all_reduce_(t, "max").item() > 0)


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s Python object on every rank."""
    if not is_initialized() or get_world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)
