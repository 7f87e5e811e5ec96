"""A small multi-process harness for CPU tests: run a module-level function on N ranks with gloo.

    from tests.distributed import run_ranks
    results = run_ranks(my_worker, world_size=2, args=(tmp_path,), timeout=120)

`my_worker(rank, world_size, *args)` runs in a fresh process with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* set and
DS_ACCELERATOR=cpu (so DeepSpeed uses its CPU accelerator and gloo), and with the test's environment as a spawned
process would have it. Whatever it returns (picklable) comes back in rank order. An exception or a hang on any rank
fails the test with that rank's traceback.

The processes are forked from a fork server that imported torch, DeepSpeed and the trainer once (multiprocessing's
"forkserver" start method with preloaded modules): each rank then starts in a fraction of a second instead of
paying ~7 s of imports (torch, DeepSpeed, and torch._dynamo and torch._inductor, which DeepSpeed's optimizer
checks import). The server only imports: every rank is still a new process with no state from another test.
"""

from __future__ import annotations

import gc
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


# Imported once in the fork server (with _SERVER_ENV set): what every rank imports anyway. DeepSpeed picks its
# accelerator when imported, hence DS_ACCELERATOR in the server's environment.
_PRELOAD = [
    "torch",
    "torch.optim",  # Imports torch._dynamo.
    "deepspeed",
    "deepspeed.runtime.zero.muon.muon_optimizer",  # Imported by DeepSpeed's ZeRO optimizer check; imports inductor.
    "ect_scale.train.trainer",
    "ect_scale.engine.zero",
    "tests.distributed",  # Last: freezes what the modules above made (below).
]
_SERVER_ENV = {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "ECT_TESTS_FORKSERVER": "1"}
if os.environ.get("ECT_TESTS_FORKSERVER") == "1":  # In the fork server: imported last of _PRELOAD.
    # The imported modules' objects are never garbage: keep them out of the collector's passes in every rank
    # (DeepSpeed calls gc.collect() while it builds an optimizer; a pass over torch._dynamo's objects takes ~0.3 s).
    gc.freeze()
_server_started = False


def _context():
    """The forkserver context, its server started (once per test process) with the modules above imported."""
    global _server_started
    ctx = mp.get_context("forkserver")
    if not _server_started:
        from multiprocessing import forkserver

        saved = {k: os.environ.get(k) for k in _SERVER_ENV}
        os.environ.update(_SERVER_ENV)
        try:
            ctx.set_forkserver_preload(_PRELOAD)
            forkserver.ensure_running()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        _server_started = True
    return ctx


def _entry(fn, rank, world_size, port, args, env, queue, parent_env):
    os.environ.clear()  # The test's environment now, as a spawned process gets it (not the server's).
    os.environ.update(parent_env)
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
    """Run `fn(rank, world_size, *args)` on `world_size` fresh processes; return results in rank order."""
    ctx = _context()
    queue = ctx.Queue()
    port = free_port()
    parent_env = dict(os.environ)
    procs = [
        ctx.Process(
            target=_entry, args=(fn, r, world_size, port, tuple(args), env or {}, queue, parent_env), daemon=False
        )
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
