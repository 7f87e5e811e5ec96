"""Small collectives for checkpointing (all ranks call them; safe without a process group).

`group` is None for the training process group, or the background writer's own gloo group (`writer_group`), whose
collectives run in the writer thread while training uses the default group.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Optional

import torch.distributed as tdist

from ect_scale.runtime import dist

# A background save waits in its group's collectives for the slowest rank's writes and uploads (a store outage
# included), so its timeout is generous; the training group keeps its own.
WRITER_GROUP_TIMEOUT = datetime.timedelta(hours=2)


def _active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def writer_group() -> Optional[Any]:
    """A new gloo group over all ranks for the background writer (collective: every rank calls it once)."""
    if not _active():
        return None
    return tdist.new_group(backend="gloo", timeout=WRITER_GROUP_TIMEOUT)


def barrier(group: Optional[Any] = None) -> None:
    if _active():
        if group is None:
            dist.barrier()
        else:
            tdist.barrier(group=group)


def all_gather_object(obj: Any, group: Optional[Any] = None) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    tdist.all_gather_object(out, obj, group=group)
    return out


def broadcast_object(obj: Any, group: Optional[Any] = None) -> Any:
    """Rank 0's `obj` on every rank."""
    if not _active():
        return obj
    if group is None:
        return dist.broadcast_object(obj)
    box = [obj]
    tdist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def on_main(fn: Callable[[], Any], group: Optional[Any] = None) -> Any:
    """Run `fn` on rank 0 and give its result (or its exception, re-raised) to every rank."""
    result: Optional[Any] = None
    error: Optional[BaseException] = None
    if dist.is_main():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            error = e
    result, error = broadcast_object((result, error), group)
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
