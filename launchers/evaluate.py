#!/usr/bin/env python3
"""FID and FD_DINOv2 of network files (EMA exports, imported EDM2 teachers) on any number of GPUs.

    # 2-step FID-50k of an EMA export, min of 3 seed sets as EDM2 reports, on 8 GPUs:
    torchrun --standalone --nproc_per_node=8 launchers/evaluate.py \\
        --net runs/ect-s/ema-0.050.safetensors --ref refs/img512.pkl --inception weights/inception-2015-12-05.pt \\
        --vae weights/sd-vae-ft-mse --steps 1,2 --t-mid 0.98 --repeats 3 --out results.json --tensorboard runs/ect-s/tb

    # A diffusion teacher with EDM's Heun sampler (NFE 63), also FD_DINOv2:
    deepspeed --num_gpus 8 launchers/evaluate.py --net teacher.safetensors --sampler heun --ref refs/img512.pkl \\
        --inception weights/inception-2015-12-05.pt --dinov2-repo weights/dinov2 \\
        --dinov2-weights weights/dinov2_vitl14_pretrain.pth --vae weights/sd-vae-ft-mse

Seeds are split across ranks with per-seed noise and labels, so the numbers are the same for any number of GPUs
(docs/evaluation.md). Results: JSON on stdout (rank 0) and in --out; scalars in --tensorboard.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from ect_scale.config.base import ConfigError
from ect_scale.eval.cli import (
    add_detector_args,
    add_runtime_args,
    add_sampler_args,
    detectors_from_args,
    optional_writer,
    resolve_metrics,
    run_main,
    specs_from_args,
)
from ect_scale.eval.inloop import METRIC_TAGS
from ect_scale.eval.pipeline import compute_metrics, generated_stats, load_for_eval, parse_seeds
from ect_scale.eval.refs import load_reference
from ect_scale.runtime.dist import get_world_size, is_main, print0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--net",
        action="append",
        required=True,
        metavar="PATH",
        help="network file (local or s3://...); repeat to evaluate several",
    )
    ap.add_argument("--ref", default=None, metavar="PKL|NPZ", help="reference statistics (EDM2 img512.pkl, ...)")
    ap.add_argument("--vae", default=None, metavar="DIR", help="local SD-VAE directory (latent networks)")
    ap.add_argument("--encoder", default=None, choices=["pixels", "sd-vae"], help="override the file's encoder")
    ap.add_argument(
        "--num-samples", dest="num", type=int, default=50_000, help="samples per evaluation (EDM2 protocol: 50000)"
    )
    ap.add_argument("--seed", type=int, default=0, help="first seed; repeat r uses seed + r*num .. + num - 1")
    ap.add_argument("--seeds", default=None, help="explicit seeds, e.g. 0-49999 (overrides --num-samples/--seed)")
    ap.add_argument("--repeats", type=int, default=1, help="seed sets to evaluate; EDM2 reports the min of 3")
    ap.add_argument("--out", default=None, metavar="JSON", help="write the results here (rank 0)")
    ap.add_argument("--tensorboard", default=None, metavar="DIR", help="write Eval/* scalars here (rank 0)")
    add_sampler_args(ap)
    add_detector_args(ap)
    add_runtime_args(ap)
    args, unknown = ap.parse_known_args(argv)
    if unknown:
        ap.error(f"unrecognised arguments: {' '.join(unknown)}")
    return args


def seed_sets(args: argparse.Namespace) -> list[np.ndarray]:
    if args.seeds is not None:
        if args.repeats != 1:
            raise ConfigError(
                "--repeats: needs --num-samples/--seed, not --seeds. Fix: drop --seeds or use --repeats 1"
            )
        return [parse_seeds(args.seeds)]
    if args.num < 2 or args.repeats < 1:
        raise ConfigError(f"--num-samples/--repeats: need num >= 2 and repeats >= 1 (got {args.num}, {args.repeats})")
    return [
        np.arange(args.seed + r * args.num, args.seed + (r + 1) * args.num, dtype=np.int64) for r in range(args.repeats)
    ]


def seed_text(seeds: np.ndarray) -> str:
    contiguous = len(seeds) > 1 and np.array_equal(seeds, np.arange(seeds[0], seeds[0] + len(seeds)))
    return f"{seeds[0]}-{seeds[-1]}" if contiguous else f"{len(seeds)} seeds"


def evaluate_network(path: str, args, specs, detectors, reference, device) -> dict:
    net, meta, encoder = load_for_eval(path, device, args.vae, args.encoder)
    name = os.path.basename(path).rsplit(".", 1)[0]
    entry = {
        "path": path,
        "name": name,
        "meta": meta,
        "encoder": encoder.describe(),
        "samplers": {s.name: s.describe() for s in specs},
        "repeats": [],
        "results": {},
    }
    values: dict[str, dict[str, list[float]]] = {s.name: {m: [] for m in detectors} for s in specs}
    for r, seeds in enumerate(seed_sets(args)):
        # EDM2 reports the min of 3 FIDs but evaluates FD_DINOv2 once: later repeats run the Inception only.
        dets = detectors if r == 0 or "fid" not in detectors else {"fid": detectors["fid"]}
        t0 = time.perf_counter()
        stats = generated_stats(
            net,
            encoder,
            dets,
            seeds,
            specs,
            args.batch_gpu,
            device,
            progress=args.progress,
            desc=f"{name} {','.join(s.name for s in specs)} seeds {seed_text(seeds)}",
        )
        wall = time.perf_counter() - t0
        row = {
            "seeds": seed_text(seeds),
            "num": int(len(seeds)),
            "wall_s": round(wall, 2),
            "img_per_s": round(len(seeds) * len(specs) / wall, 2),
        }
        for spec in specs:
            row[spec.name] = compute_metrics(stats[spec.name], reference)
            for metric, v in row[spec.name].items():
                values[spec.name][metric].append(v)
        entry["repeats"].append(row)
        print0(
            f"[eval] {name} seeds {row['seeds']}: "
            + "  ".join(f"{s}/{m} {v:.4f}" for s in values for m, v in row[s].items())
            + f"  ({wall:.0f} s)"
        )
    entry["results"] = {
        s: {m: {"values": v, "min": min(v), "mean": float(np.mean(v))} for m, v in ms.items()}
        for s, ms in values.items()
    }
    return entry


def write_outputs(report: dict, args) -> None:
    if not is_main():
        return
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".partial", "w") as f:
            f.write(text + "\n")
        os.replace(args.out + ".partial", args.out)
    writer = optional_writer(args.tensorboard)
    if writer is not None:
        for entry in report["networks"]:
            kimg = int(entry["meta"].get("nimg", 0)) // 1000
            for spec, metrics in entry["results"].items():
                for metric, r in metrics.items():
                    writer.add_scalar(f"Eval/{METRIC_TAGS[metric]}/{spec}/{entry['name']}", r["min"], kimg)
        writer.close()


def main_body(args, device) -> int:
    if not args.ref:
        raise ConfigError(
            "--ref: reference statistics are required. Fix: download EDM2's img512.pkl/img64.pkl "
            "(docs/evaluation.md) or compute them with tools/fid_ref.py"
        )
    specs = specs_from_args(args)
    metrics = resolve_metrics(args)
    sets = seed_sets(args)
    if len(sets[0]) < 50_000:
        print0(
            f"[eval] note: {len(sets[0])} < 50000 samples per evaluation; FID is biased upward at small sample "
            "counts and is not comparable with published FID-50k numbers"
        )
    reference = load_reference(args.ref)  # Every rank: a bad file fails everywhere, before any collective.
    detectors = detectors_from_args(args, metrics, device)
    for metric, det in detectors.items():
        reference.require(metric, det.feature_dim)
    print0(
        f"[eval] {len(args.net)} network(s), samplers {[s.name for s in specs]}, metrics {metrics}, "
        f"{get_world_size()} rank(s) on {device}"
    )
    t0 = time.perf_counter()
    networks = [evaluate_network(p, args, specs, detectors, reference, device) for p in args.net]
    report = {
        "networks": networks,
        "reference": {"path": reference.path, "sha256": reference.sha256},
        "detectors": {m: d.describe() for m, d in detectors.items()},
        "num_samples": int(len(sets[0])),
        "repeats": len(sets),
        "world_size": get_world_size(),
        "device": _device_name(device),
        "torch": torch.__version__,
        "host": platform.node(),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    write_outputs(report, args)
    return 0


def _device_name(device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def main(argv=None) -> int:
    return run_main(main_body, parse_args(argv), program="evaluate")


if __name__ == "__main__":
    sys.exit(main())
