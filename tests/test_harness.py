"""The multi-process harness itself: ranks run, collectives work over gloo, failures surface with tracebacks."""

import pytest

from tests.distributed import run_ranks


def _allreduce_worker(rank, world_size, value):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([float(rank + value)])
    dist.all_reduce(t)
    return float(t)


def _failing_worker(rank, world_size):
    if rank == 1:
        raise ValueError("boom on rank 1")
    return rank


def test_ranks_communicate():
    assert run_ranks(_allreduce_worker, 2, args=(10,), timeout=60) == [21.0, 21.0]


def test_failure_is_reported():
    with pytest.raises(RuntimeError, match="boom on rank 1"):
        run_ranks(_failing_worker, 2, timeout=60)
