"""A small multi-process harness for CPU tests: run a module-level function on N ranks with gloo.

    from tests.distributed import run_ranks
    results = run_ranks(my_worker, world_size=2, args=(tmp_path,), timeout=120)

`my_worker(rank, world_size, *args)` runs in a fresh spawned process with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*
set and DS_ACCELERATOR=cpu (so DeepSpeed uses its CPU accelerator and gloo). Whatever it returns (picklable)
comes back in rank order. An exception or a hang on any rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import socket
import sys
import time
import traceback
from typing import Any, Callable, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world_size, port, args, env, queue):
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "DS_ACCELERATOR": "cpu",
            "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "",
        }
    )
    os.environ.update(env)
    try:
        import torch

        torch.set_num_threads(1)
        result = fn(rank, world_size, *args)
        buf = io.BytesIO()
        torch.save(result, buf)  # Bytes, not shared-memory tensors: the child exits before the parent reads.
        queue.put((rank, "ok", buf.getvalue()))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass
        # Leave without the interpreter's teardown (a second or two per rank: the modules, DeepSpeed's and torch's
        # exit hooks); what this rank had to say is in the queue once its feeder thread has flushed.
        queue.close()
        queue.join_thread()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def run_ranks(
    fn: Callable, world_size: int, args: Sequence[Any] = (), timeout: float = 300, env: dict[str, str] | None = None
) -> list[Any]:
    """Run `fn(rank, world_size, *args)` on `world_size` spawned processes; return results in rank order."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(fn, r, world_size, port, tuple(args), env or {}, queue), daemon=False)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    import queue as queue_mod

    deadline = time.time() + timeout
    try:
        while len(results) + len(errors) < world_size:
            remaining = deadline - time.time()
            if remaining <= 0:
                raise TimeoutError(f"ranks did not finish within {timeout}s (done: {sorted(results)})")
            try:
                rank, status, payload = queue.get(timeout=min(remaining, 5))
            except queue_mod.Empty:
                dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0) and i not in results]
                if dead and not errors:
                    errors.append(f"rank(s) {dead} died with exit codes {[procs[i].exitcode for i in dead]}")
                if errors:
                    break
                continue
            if status == "ok":
                import torch

                results[rank] = torch.load(io.BytesIO(payload), weights_only=False)
            else:
                errors.append(f"--- rank {rank} ---\n{payload}")
                break
    finally:
        for p in procs:
            p.join(timeout=10 if not errors else 1)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise RuntimeError("distributed test failed:\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]


def _cases_entry(rank: int, world_size: int, fn: Callable, cases: dict) -> dict:
    return {key: fn(rank, world_size, *args) for key, args in cases.items()}


def run_cases(
    fn: Callable, cases: dict[Any, Sequence[Any]], world_size: int = 2, timeout: float = 600
) -> dict[Any, list[Any]]:
    """Run `fn(rank, world_size, *args)` for every case in ONE set of `world_size` processes, one case after the
    other (process start-up and imports paid once); return {case: results in rank order}."""
    per_rank = run_ranks(_cases_entry, world_size, args=(fn, dict(cases)), timeout=timeout)
    return {key: [r[key] for r in per_rank] for key in cases}
