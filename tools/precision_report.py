#!/usr/bin/env python3
"""How much of ECT's training signal survives each precision mode: a table (and JSON) of the signal
||f(x_t) - f(x_r)|| at every stage's r of a recipe, its rounding error per mode against fp32 with TF32 off, and
both against the recipe's pseudo-Huber c. See docs/precision.md for what the numbers mean and the recipes' choice.

    # A run's EMA (or an imported EDM2 teacher) against the recipe's stages, on a GPU:
    python tools/precision_report.py --net runs/x/ema/ema-0102400-power-0.050.safetensors \\
        --config configs/ect-img512-s.yaml --data s3://bucket/imagenet512-sdvae/manifest.json --out prec.json
    # A preset with random weights (output and embedding gains set non-zero so the network is not the identity):
    python tools/precision_report.py --preset edm2-img512-xl --gain 1 --config configs/ect-img512-xl.yaml
    # The numerics of compiled training (inductor kernels; one compile per mode), last stage only:
    python tools/precision_report.py --preset edm2-img512-s --config configs/ect-img512-s.yaml --stages 3 --compile
    # Small nets on a CPU, with the gradient's rounding error against minibatch noise:
    python tools/precision_report.py --net runs/quickstart/ect/ema/... --device cpu --grads --modes bf16,fp16

Modes: bf16, fp16, tf32, fp32; 'MODE@bf16' rounds the weights to bfloat16 first (the bf16 parameter copy that
engine.param_dtype=auto keeps for bf16/fp16). On a CPU, tf32 equals fp32 (no TF32 there).
"""

import argparse
import json
import os
import platform
import sys

import torch


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--net", help="network file: EMA export, imported EDM2 teacher, checkpoint export (local or URL)")
    src.add_argument("--preset", help="network preset with random EDM2 initialisation (e.g. edm2-img512-s)")
    ap.add_argument("--gain", type=float, default=1.0, help="--preset: value of the output and embedding gains")
    ap.add_argument(
        "--config",
        help="recipe (or a run's config.yaml) for the stages, q, k, b and c; "
        "default: ECT's ImageNet-64 values with 4 stages",
    )
    ap.add_argument("--stages", default=None, help="comma list of stages (default: every stage of the recipe)")
    ap.add_argument("--t", default="0.5,2,10,80", help="comma list of t (default 0.5,2,10,80)")
    ap.add_argument("--modes", default="bf16,fp16,tf32", help="comma list (default bf16,fp16,tf32)")
    ap.add_argument("--samples", type=int, default=8, help="samples per measurement (median over them)")
    ap.add_argument(
        "--data", help="shards manifest to take x0 and labels from (default: Gaussian x0 with std sigma_data)"
    )
    ap.add_argument("--grads", action="store_true", help="also the gradient's rounding error vs minibatch noise")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="run the modes through torch.compile (the kernels of "
        "compiled training; one compile per mode); the fp32 reference and --grads stay eager",
    )
    ap.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON report here")
    return ap.parse_args(argv)


def load_net(args, device):
    from ect_scale.config import NetworkConfig, from_dict
    from ect_scale.networks import build_network, forced_weight_norm_
    from ect_scale.networks.netfile import load_network_file

    if args.net:
        net, _ = load_network_file(args.net, overrides={"compute_dtype": "float32"})
    else:
        torch.manual_seed(args.seed)
        net = build_network(from_dict(NetworkConfig, {"preset": args.preset}, "network"))
        with torch.no_grad():  # EDM2 initialises the gains to 0 (F = 0): make the network do something.
            for name, p in net.named_parameters():
                if name.endswith("gain"):
                    p.fill_(args.gain)
    net = net.to(device).float().train()  # Train mode: ECT's passes run with (shared) dropout masks.
    forced_weight_norm_(net)
    net.requires_grad_(args.grads)
    return net


def inputs(args, net, device, num_batches: int):
    """[(x0, labels)] batches of --samples: from --data shards, or Gaussian x0 with std sigma_data."""
    if args.data:
        from ect_scale.config import DataConfig, from_dict
        from ect_scale.data import build_train_stream

        cfg = from_dict(DataConfig, {"kind": "shards", "url": args.data, "num_workers": 0}, "data")
        stream = build_train_stream(cfg, batch_gpu=args.samples, rank=0, world_size=1, seed=args.seed)
        gen = torch.Generator().manual_seed(args.seed)
        out = []
        for _ in range(num_batches):
            raw, labels = next(iter(stream))
            out.append((stream.encoder.encode(raw, gen).to(device), labels.to(device) if net.label_dim else None))
        stream.close()
        return out
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.samples, net.img_channels, net.img_resolution, net.img_resolution)
    return [
        (
            (torch.randn(shape, generator=gen) * net.sigma_data).to(device),
            torch.randint(net.label_dim, (args.samples,), generator=gen).to(device) if net.label_dim else None,
        )
        for _ in range(num_batches)
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    from ect_scale.config import ConfigError, ECTConfig, load_config
    from ect_scale.precision.report import format_table, last_stage_summary, report, stage_count

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    try:
        # Only the recipe's ECT schedule and duration are used: its data need not be reachable from here.
        cfg = load_config(args.config, ["--data.kind=synthetic"]) if args.config else None
        ect = cfg.ect if cfg is not None else ECTConfig()
        stages = (
            [int(s) for s in args.stages.split(",")]
            if args.stages
            else list(range(stage_count(ect, cfg.train.total_nimg if cfg else None)))
        )
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        bad = [
            m
            for m in modes
            if m.split("@")[0] not in ("bf16", "fp16", "tf32", "fp32") or m.split("@")[1:] not in ([], ["bf16"])
        ]
        if bad:
            raise ConfigError(f"--modes: unknown {bad}. Fix: use bf16, fp16, tf32, fp32, optionally with @bf16")
        net = load_net(args, device)
        batches = inputs(args, net, device, 3 if args.grads else 1)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    x0, labels = batches[0]
    result = report(
        net,
        x0,
        labels,
        ect,
        stages,
        [float(t) for t in args.t.split(",")],
        modes,
        grads=args.grads,
        grad_batches=batches,
        compiled=args.compile,
    )
    result.update(
        {
            "source": args.net or f"{args.preset} (random init, gains {args.gain})",
            "config": args.config,
            "samples": args.samples,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "last_stage_error_vs_tf32": last_stage_summary(result),
        }
    )
    print(
        f"precision report: {result['source']} on {result['device']} ({args.samples} samples; "
        f"{'compiled' if args.compile else 'eager'}; errors against eager fp32 with TF32 off; medians over samples)"
    )
    print(format_table(result))
    if result["last_stage_error_vs_tf32"]:
        print(
            "last stage, error relative to tf32 (median over t): "
            + ", ".join(f"{m} {v:.2f}x" for m, v in result["last_stage_error_vs_tf32"].items())
        )
    if device.type == "cpu" and any(m.startswith("tf32") for m in modes):
        print("note: on a CPU there is no TF32, so tf32 equals fp32 here")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
