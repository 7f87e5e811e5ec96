#!/usr/bin/env python3
"""Benchmark the full ECT training step (same engine code as training) on synthetic latents; prints one JSON line.

    python launchers/bench.py --preset edm2-img512-s --batch-gpu 32                      # one GPU
    deepspeed --num_gpus 4 launchers/bench.py --preset edm2-img512-xl --batch-gpu 32 --zero-stage 2
    python launchers/bench.py --preset edm2-img512-xl --precision fp16                    # EDM2's fp16 compute
    python launchers/bench.py --preset edm2-img512-xl --fp32                              # the plain fp32 path

Global batch = batch_gpu x world size x --accum (default one accumulation round, as in the official ECT
measurements; ECT's ImageNet recipe, batch 128 at --batch-gpu 32, is --accum 4 on one GPU).
--max-memory-gib caps this process's GPU memory (e.g. 79 to check that a model fits an 80 GB card on an H200).
Extra `--a.b=value` arguments override any config field (e.g. --ema.stds=[0.05]).
"""

import argparse
import json
import os
import sys

from ect_scale.config import load_config
from ect_scale.runtime import entry


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="edm2-img512-s")
    ap.add_argument("--batch-gpu", type=int, default=32)
    ap.add_argument("--zero-stage", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--precision",
        default="bf16",
        choices=["bf16", "fp16", "tf32", "fp32"],
        help="U-Net compute precision (engine.precision; fp32 masters in every mode)",
    )
    ap.add_argument("--param-dtype", default="auto", choices=["auto", "bf16", "fp32"], help="engine.param_dtype")
    ap.add_argument("--fp32", action="store_true", help="same as --precision fp32 (the plain path, TF32 off)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    ap.add_argument(
        "--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"]
    )
    ap.add_argument("--combo-kernels", action="store_true", help="inductor horizontal fusion of small kernels")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--sdpa", action="store_true", help="fused scaled-dot-product attention")
    ap.add_argument("--accum", type=int, default=1, help="gradient-accumulation rounds per optimizer step")
    ap.add_argument("--max-memory-gib", type=float, default=None, help="cap the GPU memory this process may use")
    ap.add_argument("--dropout", type=float, default=0.4, help="dropout at <= 16 px (ECT ImageNet recipe)")
    ap.add_argument("--out", default=None, help="also append the JSON line to this file")
    ap.add_argument(
        "--gate",
        default=None,
        metavar="DIR",
        help="warm up (compile) alongside other benchmarks, then "
        "time one at a time: wait for --gate-count processes to be ready in DIR, lock while timing",
    )
    ap.add_argument("--gate-count", type=int, default=1, help="processes that share --gate")
    ap.add_argument("--gate-name", default="", help="this job's name in --gate (its starter marks it done on exit)")
    ap.add_argument("--gate-timeout", type=float, default=900.0, help="longest wait for the others (s)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return ap


def _config(args, overrides: list[str]):
    """The benchmark's run config: the network and engine options above, synthetic data shaped like the network's
    input, no checkpoints or logs; `overrides` (`--a.b=value`) last."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    fields = {
        "network.preset": args.preset,
        "network.dropout": args.dropout,
        "network.dropout_res": 16,
        "network.attention": "sdpa" if args.sdpa else "einsum",
        "engine.precision": "fp32" if args.fp32 else args.precision,
        "engine.param_dtype": args.param_dtype,
        "engine.zero_stage": args.zero_stage,
        "engine.compile": args.compile,
        "engine.channels_last": args.channels_last,
        "engine.compile_mode": args.compile_mode,
        "engine.combo_kernels": args.combo_kernels,
        "train.batch_gpu": args.batch_gpu,
        "train.batch_size": args.batch_gpu * world * args.accum,
        "train.total_nimg": 10**12,
        "train.status_nimg": 10**12,
        "data.kind": "synthetic",
        "checkpoint.enabled": "false",
        "ema.export_nimg": 0,
        "logging.progress": "none",
        "logging.tensorboard": "false",
        "logging.jsonl": "false",
        "run_dir": "/tmp/ect_scale_bench",
    }
    cfg = load_config(None, [f"--{k}={v}" for k, v in fields.items()] + overrides)
    net = cfg.network  # Synthetic data shaped like the network's input (latent moments or RGB pixels).
    return load_config(
        None,
        [f"--{k}={v}" for k, v in fields.items()]
        + [
            f"--data.synthetic_encoder={'sd-vae' if net.img_channels == 4 else 'pixels'}",
            f"--data.synthetic_resolution={net.img_resolution}",
            f"--data.synthetic_label_dim={net.label_dim}",
        ]
        + overrides,
    )


def _main(argv) -> int:
    args, overrides = _parser().parse_known_args(argv)
    cfg = _config(args, overrides)

    from ect_scale.runtime import dist
    from ect_scale.runtime.gate import TimingGate
    from ect_scale.train.bench import benchmark, limit_gpu_memory

    entry.set_log_dir(os.path.join(cfg.run_dir, "logs"))
    mem_limit_gb = limit_gpu_memory(args.max_memory_gib)
    gate = TimingGate(args.gate, args.gate_count, args.gate_timeout, args.gate_name) if args.gate else None
    result = benchmark(cfg, steps=args.steps, warmup=args.warmup, gate=gate, mem_limit_gb=mem_limit_gb)
    if gate is not None:
        result.update(gate_waited_sec=gate.waited_sec, gate_timed_out=gate.timed_out)
    if dist.is_main():
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0


def main(argv=None) -> int:
    return entry.run(lambda: _main(argv), program="bench")


if __name__ == "__main__":
    sys.exit(main())
