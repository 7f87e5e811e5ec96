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


_touched: list[int] = []


def _isolation_worker(rank, world_size):
    import os

    _touched.append(rank)  # A module-level global: a fresh process starts without the last run's changes.
    return os.environ.get("ECT_HARNESS_PROBE"), os.environ.get("ECT_TESTS_FORKSERVER"), list(_touched)


def test_each_run_gets_fresh_processes_with_the_tests_environment(monkeypatch):
    """The ranks are forked from a server that preloaded the heavy modules; they still see the environment the
    test has now (not the server's) and no state of an earlier run."""
    run_ranks(_allreduce_worker, 2, args=(0,), timeout=60)  # The server is running before the change below.
    monkeypatch.setenv("ECT_HARNESS_PROBE", "set by the test")
    for _ in range(2):
        assert run_ranks(_isolation_worker, 2, timeout=60) == [
            ("set by the test", None, [0]),
            ("set by the test", None, [1]),
        ]
