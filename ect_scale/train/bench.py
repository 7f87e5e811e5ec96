"""Training-step benchmark through the same code path as training (Trainer.train_step on synthetic data).

The timed step is the full ECT step: data -> latent sampling -> dropout masks -> online forward -> target forward
-> backward -> optimizer step (fused Adam on the fp32 masters) -> forced weight normalisation -> all EMA updates.
MFU counts 4 x fwd_flops per image (grad forward, backward ~2x, no-grad target forward) against the card's dense
bf16 peak (`train.compute.PEAK_BF16_FLOPS`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

import torch

from ect_scale.config import Config
from ect_scale.networks.flops import model_stats
from ect_scale.runtime import dist
from ect_scale.train.compute import peak_flops


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def limit_gpu_memory(gib: Optional[float]) -> Optional[float]:
    """Cap this process's CUDA caching allocator at `gib` GiB (emulates a smaller card; an OOM is then real).
    Returns the cap in force (None: no cap, or no GPU)."""
    if not gib or not torch.cuda.is_available():
        return None
    device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), device)
    return gib


def benchmark(cfg: Config, steps: int = 20, warmup: int = 5, gate=None, mem_limit_gb: Optional[float] = None) -> dict:
    """Time `steps` optimizer steps after `warmup` ones; returns a JSON-able dict (identical on all ranks).

    `gate` (a context manager, e.g. `runtime.gate.TimingGate`) is entered after the warm-up and held while timing:
    several benchmarks can then compile at the same time and still be timed one at a time on a shared GPU.
    `mem_limit_gb` is recorded with the result (see `limit_gpu_memory`)."""
    from ect_scale.train.trainer import Trainer

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
    mem = torch.tensor(
        [
            torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0,
            torch.cuda.max_memory_reserved(device) / 2**30 if cuda else 0.0,
        ],
        device=device,
    )
    dist.all_reduce_(mem, "max")
    out = {
        "preset": cfg.network.preset,
        "batch_gpu": cfg.train.batch_gpu,
        "batch_size": cfg.train.batch_size,
        "world_size": world,
        "zero_stage": cfg.engine.zero_stage,
        "precision": cfg.engine.precision,
        "param_dtype": cfg.engine.resolved_param_dtype(),
        "attention": cfg.network.attention,
        "compile": cfg.engine.compile,
        "compile_mode": cfg.engine.compile_mode,
        "combo_kernels": cfg.engine.combo_kernels,
        "channels_last": cfg.engine.channels_last,
        "accumulation_rounds": cfg.train.accumulation_rounds(world),
        "ema_profiles": len(trainer.ema.profiles),
        "graph_weight_norm": cfg.engine.graph_weight_norm,
        "offload_optimizer": cfg.engine.offload_optimizer,
        "overlap_comm": cfg.engine.overlap_comm,
        "steps": steps,
        "sec_per_step": sec / steps,
        "img_per_sec": img_per_sec,
        "img_per_sec_per_gpu": img_per_sec / world,
        "train_flops_per_img": stats["train_step_flops"],
        "fwd_flops": stats["fwd_flops"],
        "peak_mem_gb": float(mem[0]),
        "peak_reserved_gb": float(mem[1]),
        "mem_limit_gb": mem_limit_gb,
        "data_wait_frac": trainer.stats.data_sec / max(trainer.stats.step_sec, 1e-9),
        "skipped_steps": trainer.state.skipped_steps,
        "warmup_sec": warmup_sec,
        "timed_window_unix": timed_window,
        "loss_scale": trainer.engine.scaler.scale if trainer.engine.scaler is not None else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_bf16_flops": peak,
        "mfu": img_per_sec * stats["train_step_flops"] / (peak * world) if peak else None,
    }
    trainer.stream.close()
    trainer.monitor.close()
    return out
