"""Small collectives for checkpointing (all ranks call them; safe without a process group)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch.distributed as tdist

from ect_scale.runtime import dist


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 and give its result (or its exception, re-raised) to every rank."""
    result: Optional[Any] = None
    error: Optional[BaseException] = None
    if dist.is_main():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            error = e
    result, error = dist.broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def on_node_leader(fn: Callable[[], Any]) -> list[Optional[str]]:
    """Run `fn` on each node's local rank 0 (which owns the node-local staging folder), then a barrier. Returns
    every rank's error text (None where fine) so that all ranks can decide alike."""
    error = None
    if dist.env_local_rank() == 0:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - reported to every rank
            error = f"{type(e).__name__}: {e}"
    return all_gather_object(error)
