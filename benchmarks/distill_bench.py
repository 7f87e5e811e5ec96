#!/usr/bin/env python3
"""Speed and memory of a distillation step (`ect.objective: cd | ecd`) next to ECT's, and what the teacher costs on
its own; one JSON line per run (run by benchmarks/distill_gpu.sh; one process, one GPU, synthetic latents).

    python benchmarks/distill_bench.py --preset edm2-img512-s --objective ecd --teacher /tmp/t-s.safetensors

The timed step is `Trainer.train_step` (the training loop's own step: for ECD the teacher's Heun step, the online
forward and backward, the target forward, Adam, forced weight normalisation, the EMAs; for CD also the gather of the
target network theta-). Besides the step it times, on one micro-batch after the timed steps: the teacher's ODE step
alone (2 forwards for Heun, under no_grad) and, for CD, theta-'s per-step gather. Memory: peak allocated and
reserved over the timed steps, and the bytes of each frozen replica's parameters. A missing --teacher file is made:
a random network of the student's preset (a teacher's cost does not depend on its weights).
Extra `--a.b=value` arguments override config fields.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="edm2-img512-s")
    ap.add_argument("--objective", default="ecd", choices=["ect", "ecd", "cd"])
    ap.add_argument("--teacher", default=None, help="teacher network file (made from --preset if missing)")
    ap.add_argument("--batch-gpu", type=int, default=32)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "tf32", "fp32"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the component timings")
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    return ap.parse_known_args(argv)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_teacher(path: str, preset: str) -> None:
    """A random network of `preset` (bf16 file: half the bytes to write and read)."""
    from ect_scale.config import NetworkConfig, from_dict
    from ect_scale.networks import build_network
    from ect_scale.networks.netfile import save_network_file

    config = from_dict(NetworkConfig, {"preset": preset}, "network")
    with torch.no_grad():
        net = build_network(config)
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(0.5)  # Non-zero gains, as a trained network has.
    save_network_file(
        path, net.state_dict(), config, meta={"source": "benchmarks/distill_bench.py"}, dtype=torch.bfloat16
    )


def build_config(args, overrides):
    from ect_scale.config import load_config

    fields = {
        "network.preset": args.preset,
        "network.dropout": 0.4,
        "network.dropout_res": 16,
        "network.attention": "sdpa",
        "engine.precision": args.precision,
        "engine.zero_stage": 1,
        "engine.channels_last": True,
        "engine.precision_check": False,
        "train.batch_gpu": args.batch_gpu,
        "train.batch_size": args.batch_gpu,
        "train.total_nimg": 10**12,
        "train.status_nimg": 10**12,
        "data.kind": "synthetic",
        "data.synthetic_encoder": "sd-vae",
        "data.synthetic_resolution": 64,
        "data.synthetic_label_dim": 1000,
        "checkpoint.enabled": "false",
        "ema.export_nimg": 0,
        "logging.progress": "none",
        "logging.tensorboard": "false",
        "logging.jsonl": "false",
        "run_dir": f"/tmp/distill_bench-{args.preset}-{args.objective}",
        "ect.stage_nimg": 10**9,
        "ect.q": 256,  # Delta t / t = n(t)/256: nearly every sample has r > 0 (ECT's last stage).
    }
    if args.objective != "ect":
        fields.update({"ect.objective": args.objective, "teacher": args.teacher})
    return load_config(None, [f"--{k}={v}" for k, v in fields.items()] + overrides)


def timed(fn, device, reps: int) -> float:
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def main(argv=None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    if args.objective != "ect" and not os.path.exists(args.teacher or ""):
        if not args.teacher:
            print("error: --teacher is required for cd and ecd. Fix: pass a path (made if missing)", file=sys.stderr)
            return 2
        make_teacher(args.teacher, args.preset)
    from ect_scale.ect import ode_step
    from ect_scale.train.teacher import param_bytes
    from ect_scale.train.trainer import Trainer

    cfg = build_config(args, overrides)
    trainer = Trainer(cfg)
    device = trainer.device
    t = time.perf_counter()
    for _ in range(args.warmup):
        trainer.train_step()
    sync(device)
    warmup_sec = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    sync(device)
    sec = (time.perf_counter() - t) / args.steps
    cuda = device.type == "cuda"
    out = {
        "objective": args.objective,
        "preset": args.preset,
        "precision": args.precision,
        "batch_gpu": args.batch_gpu,
        "sec_per_step": sec,
        "img_per_sec": args.batch_gpu / sec,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
        "train_flops_per_img": trainer.compute.flops_per_image,
        "warmup_sec": warmup_sec,
        "skipped_steps": trainer.state.skipped_steps,
        "loss": trainer.stats.reduce()["Loss/mean"] if trainer.stats.images else None,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
    }
    parts = trainer.distill
    if parts is not None:
        out["replica_dtype"] = str(parts.dtype).replace("torch.", "")
        out["teacher_param_gb"] = param_bytes(parts.teacher.module) / 2**30
        net = cfg.network
        x = torch.randn(args.batch_gpu, net.img_channels, net.img_resolution, net.img_resolution, device=device)
        t = torch.full((args.batch_gpu,), 1.0, device=device)
        labels = torch.randint(max(net.label_dim, 1), (args.batch_gpu,), device=device)
        solver, denoise = cfg.distill.solver, trainer.objective.denoise
        step = lambda: ode_step(denoise, x, t, t * (1 - 1 / 256), labels, solver)  # noqa: E731
        out["teacher_step_sec"] = timed(step, device, args.reps)  # One ODE step t -> r: 2 forwards for Heun.
        out["teacher_step_forwards"] = 2 if solver == "heun" else 1
        if parts.target is not None:
            out["target_param_gb"] = param_bytes(parts.target.module) / 2**30
            out["target_refresh_sec"] = timed(parts.target.refresh, device, args.reps)
    line = json.dumps(out)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    trainer.stream.close()
    trainer.monitor.close()
    return 0


if __name__ == "__main__":
    from ect_scale.runtime import entry

    sys.exit(entry.run(lambda: main(), program="distill_bench"))
