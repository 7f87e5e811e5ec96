"""Training-step benchmark through the same code path as training (Trainer.train_step on synthetic data).

The timed step is the full ECT step: data -> latent sampling -> dropout masks -> online forward -> target forward
-> backward -> optimizer step (fused Adam on the fp32 masters) -> forced weight normalisation -> all EMA updates.
MFU counts 4 x fwd_flops per image (grad forward, backward ~2x, no-grad target forward) against the card's dense
bf16 peak (`monitor.PEAK_BF16_FLOPS`).
"""

from __future__ import annotations

import contextlib
import time

import torch

from ect_scale import dist
from ect_scale.config import Config
from ect_scale.monitor import peak_flops
from ect_scale.networks.flops import model_stats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_MEM_LIMIT_GIB: list = [None]


def limit_gpu_memory(gib: float) -> None:
    """Cap this process's CUDA caching allocator at `gib` GiB (emulates a smaller card; an OOM is then real)."""
    if not torch.cuda.is_available():
        return
    device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), device)
    _MEM_LIMIT_GIB[0] = gib


def benchmark(cfg: Config, steps: int = 20, warmup: int = 5, gate=None) -> dict:
    """Time `steps` optimizer steps after `warmup` ones; returns a JSON-able dict (identical on all ranks).

    `gate` (a context manager, e.g. `TimingGate`) is entered after the warm-up and held while timing: several
    benchmarks can then compile at the same time and still be timed one at a time on a shared GPU."""
    from ect_scale.trainer import Trainer

    trainer = Trainer(cfg)
    device = trainer.device
    t_warm = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step()
    _sync(device)
    warmup_sec = time.perf_counter() - t_warm
    dist.barrier()
    with gate if gate is not None else contextlib.nullcontext():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.stats.reset()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        _sync(device)
        dist.barrier()
        sec = time.perf_counter() - t0
        timed_window = (time.time() - sec, time.time())
    world = dist.get_world_size()
    img_per_sec = steps * cfg.train.batch_size / sec
    stats = model_stats(cfg.network)
    peak = peak_flops(device)
    # Peaks of the timed steps: allocated, and reserved by the caching allocator. Reserved memory is kept, so it
    # includes CUDA-graph pools set up during warm-up, whose tensors do not show in the allocated peak of replays.
    cuda = device.type == "cuda"
    mem = torch.tensor([torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0,
                        torch.cuda.max_memory_reserved(device) / 2**30 if cuda else 0.0], device=device)
    dist.all_reduce_(mem, "max")
    out = {
        "preset": cfg.network.preset, "batch_gpu": cfg.train.batch_gpu, "batch_size": cfg.train.batch_size,
        "world_size": world, "zero_stage": cfg.engine.zero_stage, "precision": cfg.engine.precision,
        "param_dtype": cfg.engine.resolved_param_dtype(), "attention": cfg.network.attention,
        "compile": cfg.engine.compile, "compile_mode": cfg.engine.compile_mode,
        "combo_kernels": cfg.engine.combo_kernels, "channels_last": cfg.engine.channels_last,
        "accumulation_rounds": cfg.train.accumulation_rounds(world), "ema_profiles": len(trainer.ema.profiles),
        "graph_weight_norm": cfg.engine.graph_weight_norm, "offload_optimizer": cfg.engine.offload_optimizer,
        "overlap_comm": cfg.engine.overlap_comm, "steps": steps, "sec_per_step": sec / steps,
        "img_per_sec": img_per_sec, "img_per_sec_per_gpu": img_per_sec / world,
        "train_flops_per_img": stats["train_step_flops"], "fwd_flops": stats["fwd_flops"],
        "peak_mem_gb": float(mem[0]), "peak_reserved_gb": float(mem[1]), "mem_limit_gb": _MEM_LIMIT_GIB[0],
        "data_wait_frac": trainer.stats.data_sec / max(trainer.stats.step_sec, 1e-9),
        "skipped_steps": trainer.state.skipped_steps, "warmup_sec": warmup_sec,
        "timed_window_unix": timed_window,
        "loss_scale": trainer.engine.scaler.scale if trainer.engine.scaler is not None else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_bf16_flops": peak,
        "mfu": img_per_sec * stats["train_step_flops"] / (peak * world) if peak else None,
    }
    trainer.stream.close()
    trainer.monitor.close()
    return out


class TimingGate:
    """Lets several benchmark processes on one GPU warm up (compile) together, then time one at a time.

    Entering waits until `count` processes have announced themselves ready in `folder` (or `timeout_s` passed),
    then takes an exclusive file lock for the timed section. Rank 0 of each job takes part; other ranks follow
    through the job's own barrier. A job that dies before it is ready should still be counted: the script that
    starts it touches `ready.<name>` when it exits (see benchmarks/round13a.sh), under the same `name`."""

    def __init__(self, folder: str, count: int, timeout_s: float = 900.0, name: str = ""):
        self.folder, self.count, self.timeout_s = folder, count, timeout_s
        self.name = name
        self.waited_sec, self.timed_out, self._lock = 0.0, False, None

    def __enter__(self):
        import fcntl
        import os

        if dist.get_rank() == 0:
            os.makedirs(self.folder, exist_ok=True)
            open(os.path.join(self.folder, f"ready.{self.name or os.getpid()}"), "w").close()
            t0 = time.time()
            while len([f for f in os.listdir(self.folder) if f.startswith("ready.")]) < self.count:
                if time.time() - t0 > self.timeout_s:
                    self.timed_out = True
                    break
                time.sleep(0.5)
            self._lock = open(os.path.join(self.folder, "lock"), "w")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            self.waited_sec = time.time() - t0
        dist.barrier()
        return self

    def __exit__(self, *exc):
        import fcntl

        dist.barrier()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
        return False
