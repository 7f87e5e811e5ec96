"""The few process-group operations evaluation needs, safe without a process group (single process).

Evaluation runs under whatever `torch.distributed` default group the caller set up (DeepSpeed, torchrun, or the
trainer); `init_from_env` sets one up for the standalone launchers. Collectives are made by every rank; the
rank-0-only side effects (printing, writing files) are decided inside helpers through `is_main()`.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return get_rank() == 0


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place SUM over all ranks (identity without a process group). Returns `tensor`."""
    if is_distributed() and get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_distributed() and get_world_size() > 1:
        dist.barrier()


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only, flushed (cluster logs are files)."""
    if is_main():
        print(*args, **kwargs, flush=True)


def init_from_env(device: str = "auto", timeout_min: float = 60.0) -> torch.device:
    """Join the process group described by torchrun/deepspeed environment variables, if any; return the device.

    RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT come from `torchrun` or the `deepspeed` launcher; without
    them this is a single process and no group is created. `device='auto'` picks cuda:LOCAL_RANK when CUDA is
    available, else the CPU. NCCL is used on CUDA, gloo on the CPU.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not is_distributed():
        kwargs = dict(backend="nccl" if dev.type == "cuda" else "gloo",
                      timeout=datetime.timedelta(minutes=timeout_min))
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return dev


def shutdown(wait: bool = True) -> None:
    """Leave the process group (after a barrier unless `wait=False`, e.g. when exiting on an error)."""
    if is_distributed():
        if wait:
            barrier()
        dist.destroy_process_group()
