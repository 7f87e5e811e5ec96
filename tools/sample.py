#!/usr/bin/env python3
"""Samples from any network file (EMA export, EDM2 import, checkpoint export) as a PNG grid and/or an .npz.

    # ECT 1- and 2-step grids of an EMA (each sample depends only on its seed):
    python tools/sample.py --net runs/x/ema/ema-0102400-power-0.050.safetensors --steps 2 --t-mid 0.98 \\
        --seeds 0-63 --grid samples-2step.png --vae weights/sd-vae-ft-mse
    # A diffusion teacher with EDM's Heun sampler, one row per class 0..9, 10 samples each, plus the arrays:
    python tools/sample.py --net teacher.safetensors --sampler heun --heun-steps 32 --classes 0-9 --per-class 10 \\
        --grid teacher.png --npz teacher.npz

Seeds: '0-63' or '0,5,10-19'. Noise and class labels come from per-seed generators, so a seed gives the same
sample in any batch, on any number of processes (same device type). --classes fixes the classes instead of
drawing them. Latent networks need --vae (a local SD-VAE directory) to decode to pixels.
"""

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", required=True, help="network file (local path or URL)")
    ap.add_argument("--sampler", default="consistency", choices=["consistency", "heun", "euler"])
    ap.add_argument("--steps", type=int, default=1, help="consistency steps (2 needs --t-mid)")
    ap.add_argument("--t-mid", default=None, help="intermediate times, largest first, comma-separated")
    ap.add_argument("--t-max", type=float, default=80.0)
    ap.add_argument("--heun-steps", type=int, default=32, help="EDM sampler steps (Heun NFE 2N-1, Euler NFE N)")
    ap.add_argument("--seeds", default="0-63", help="e.g. 0-63 or 0,5,10-19 (default 0-63)")
    ap.add_argument("--classes", default=None, help="fix classes, e.g. 3 or 0-9 (default: drawn per seed)")
    ap.add_argument(
        "--per-class",
        type=int,
        default=None,
        help="with --classes: samples per class (one grid row each), seeds counted from the first of --seeds",
    )
    ap.add_argument("--grid", default=None, metavar="PNG", help="write a padded grid here")
    ap.add_argument("--cols", type=int, default=None, help="grid columns (default: square, or --per-class)")
    ap.add_argument("--zoom", type=int, default=None, help="magnification of each image (default: cells >= 32 px)")
    ap.add_argument("--npz", default=None, help="write images (uint8 NHWC), labels and seeds here")
    ap.add_argument("--vae", default=None, metavar="DIR", help="local SD-VAE directory (latent networks)")
    ap.add_argument("--batch", type=int, default=64, help="samples per network call")
    ap.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    args = ap.parse_args(argv)
    if not args.grid and not args.npz:
        ap.error("give --grid PNG and/or --npz FILE")
    return args


def plan(args, label_dim: int):
    """(seeds, fixed class per seed or None)."""
    from ect_scale.eval.pipeline import parse_seeds

    seeds = parse_seeds(args.seeds)
    if args.classes is None:
        return seeds, None
    if label_dim == 0:
        raise ValueError("--classes: the network is unconditional (label_dim 0). Fix: drop --classes")
    classes = [int(c) for c in parse_seeds(args.classes)]
    if any(not 0 <= c < label_dim for c in classes):
        raise ValueError(f"--classes: every class must lie in [0, {label_dim}), got {classes}")
    if args.per_class:
        seeds = parse_seeds(f"{seeds[0]}-{seeds[0] + args.per_class * len(classes) - 1}")
        return seeds, [c for c in classes for _ in range(args.per_class)]
    return seeds, [classes[i % len(classes)] for i in range(len(seeds))]


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from ect_scale.ect import generate
    from ect_scale.eval.grids import auto_zoom, make_grid, save_png
    from ect_scale.eval.pipeline import load_for_eval

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    t_mid = [float(t) for t in args.t_mid.split(",")] if args.t_mid else []
    try:
        if args.sampler == "consistency" and len(t_mid) < args.steps - 1:
            raise ValueError(
                f"--t-mid: {args.steps} steps need {args.steps - 1} intermediate time(s). Fix: pass "
                "--t-mid (the run's ect.t_mid; ECT ImageNet-64: 1.526)"
            )
        net, meta, encoder = load_for_eval(args.net, device, args.vae)
        seeds, classes = plan(args, net.label_dim)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    kw = (
        dict(sampler="consistency", t_max=args.t_max, t_mid=t_mid[: args.steps - 1])
        if args.sampler == "consistency"
        else dict(sampler="heun", t_max=args.t_max, num_steps=args.heun_steps, order=2 if args.sampler == "heun" else 1)
    )
    images, labels = [], []
    for i in range(0, len(seeds), args.batch):
        batch = [int(s) for s in seeds[i : i + args.batch]]
        onehot = None
        if classes is not None:
            onehot = torch.nn.functional.one_hot(torch.tensor(classes[i : i + args.batch]), net.label_dim).float()
            onehot = onehot.to(device)
        x = generate(net, batch, device, labels=onehot, **kw)
        images.append(encoder.decode(x).cpu())
        labels.extend(classes[i : i + args.batch] if classes is not None else _drawn_labels(net, batch, device))
    images = torch.cat(images)
    if args.grid:
        cols = args.cols or (args.per_class if args.per_class else None)
        save_png(make_grid(images, cols=cols, pad=2, zoom=args.zoom or auto_zoom(images.shape[-1])), args.grid)
    if args.npz:
        os.makedirs(os.path.dirname(os.path.abspath(args.npz)), exist_ok=True)
        np.savez_compressed(
            args.npz, images=images.permute(0, 2, 3, 1).numpy(), labels=np.asarray(labels), seeds=np.asarray(seeds)
        )
    print(
        json.dumps(
            {
                "net": args.net,
                "num": len(seeds),
                "sampler": kw,
                "grid": args.grid,
                "npz": args.npz,
                "device": str(device),
                "wall_s": round(time.perf_counter() - t0, 2),
            }
        )
    )
    return 0


def _drawn_labels(net, seeds, device) -> list:
    """The class each seed's generator draws (after its noise, as the samplers do); [] when unconditional."""
    from ect_scale.ect import SeedGenerators, draw_labels, draw_latents

    if net.label_dim == 0:
        return [-1] * len(seeds)
    rng = SeedGenerators(seeds, device)
    draw_latents(rng, net)
    return draw_labels(rng, net.label_dim).argmax(1).tolist()


if __name__ == "__main__":
    sys.exit(main())
