#!/usr/bin/env python3
"""Reference statistics (FID / FD_DINOv2) of an image dataset, computed across ranks; or FD of images to a reference.

    # EDM2 protocol: every training image at the training resolution, no flips (img512.zip from dataset_tool.py):
    torchrun --standalone --nproc_per_node=8 tools/fid_ref.py --data datasets/img512.zip --out refs/img512-ours.pkl \\
        --inception weights/inception-2015-12-05.pt --dinov2-repo weights/dinov2 \\
        --dinov2-weights weights/dinov2_vitl14_pretrain.pth

    # From the raw ImageNet train folder, center-cropped on the fly exactly like tools/make_shards.py:
    torchrun --standalone --nproc_per_node=8 tools/fid_ref.py --source imagenet/train --resolution 512 \\
        --out refs/img512-ours.pkl --inception weights/inception-2015-12-05.pt

    # FD of a folder of images (e.g. samples written elsewhere) against a reference:
    python tools/fid_ref.py --data samples/ --compare refs/img512.pkl --inception weights/inception-2015-12-05.pt

--data: a folder of images (recursive), a .zip of images (EDM2 dataset_tool format) or an .npz of uint8 images,
used as stored. --source: any image source of tools/make_shards.py (ImageNet class tree, flat folder with
--labels, sklearn-digits), center-cropped to --resolution (EDM2's center-crop-dhariwal).
--out: .pkl writes EDM2's format (readable by EDM2's tools), .npz ours. Latent shards are not images: reference
statistics of ImageNet-512 come from the RGB images (EDM2's img512.pkl), never from latents.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ect_scale.config.base import ConfigError
from ect_scale.eval.cli import add_detector_args, add_runtime_args, detectors_from_args, resolve_metrics, run_main
from ect_scale.eval.images import ImageDataset, SourceDataset, rank_loader
from ect_scale.eval.pipeline import compute_metrics, dataset_stats
from ect_scale.eval.refs import load_reference, save_reference
from ect_scale.runtime.dist import get_rank, get_world_size, is_main, print0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR|ZIP|NPZ", help="images already at the training resolution, used as stored")
    src.add_argument(
        "--source",
        metavar="DIR|sklearn-digits",
        help="raw images (ImageNet class tree, flat folder, "
        "sklearn-digits), center-cropped to --resolution as tools/make_shards.py does",
    )
    src.add_argument(
        "--shards",
        metavar="MANIFEST",
        help="a small shard dataset, decoded as samples are (with --classifier: the offline development metric)",
    )
    ap.add_argument("--resolution", type=int, default=None, help="with --source: crop size (ImageNet-512: 512)")
    ap.add_argument("--labels", default=None, help="with --source: labels file of a flat folder (as make_shards.py)")
    ap.add_argument("--out", default=None, metavar="PKL|NPZ", help="where to write the statistics")
    ap.add_argument("--compare", default=None, metavar="REF", help="print the FD of --data to these statistics")
    ap.add_argument("--max-images", type=int, default=None, help="a fixed random subset of this size (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random subset")
    ap.add_argument("--workers", type=int, default=2, help="image-decoding workers per rank")
    add_detector_args(ap)
    add_runtime_args(ap)
    args, unknown = ap.parse_known_args(argv)
    if unknown:
        ap.error(f"unrecognised arguments: {' '.join(unknown)}")
    if not args.out and not args.compare:
        ap.error("give --out (write statistics) and/or --compare (FD against reference statistics)")
    return args


def open_dataset(args) -> torch.utils.data.Dataset:
    if args.shards is not None:
        from ect_scale.eval.images import TensorImages, decoded_shards

        images, _, _ = decoded_shards(args.shards, getattr(args, "vae", None))
        return TensorImages(images, max_images=args.max_images, seed=args.seed, where=args.shards)
    if args.source is None:
        return ImageDataset(args.data, max_images=args.max_images, seed=args.seed)
    if not args.resolution:
        raise ConfigError(
            "--resolution: required with --source (the training resolution, e.g. 512 or 64). Fix: pass --resolution R"
        )
    return SourceDataset(
        args.source, args.resolution, max_images=args.max_images, seed=args.seed, labels_file=args.labels
    )


def main_body(args, device) -> int:
    metrics = resolve_metrics(args)
    reference = load_reference(args.compare) if args.compare else None
    detectors = detectors_from_args(args, metrics, device)
    if args.out and not args.out.endswith((".pkl", ".npz")):
        raise ConfigError(f"--out: {args.out} must end in .pkl (EDM2 format) or .npz (ours). Fix: rename it")
    dataset = open_dataset(args)
    print0(
        f"[ref] {len(dataset):,} images of {dataset.resolution[1]}x{dataset.resolution[0]} from "
        f"{args.data or args.source or args.shards}, metrics {metrics}, {get_world_size()} rank(s)"
    )
    loader = rank_loader(
        dataset,
        args.batch_gpu,
        get_rank(),
        get_world_size(),
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    t0 = time.perf_counter()
    stats = dataset_stats(loader, len(dataset), detectors, device, progress=args.progress, desc="ref")
    report = {
        "data": args.data or args.source or args.shards,
        "num_images": len(dataset),
        "resolution": list(dataset.resolution),
        "detectors": {m: d.describe() for m, d in detectors.items()},
        "world_size": get_world_size(),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    if args.out and is_main():
        meta = {k: report[k] for k in ("data", "num_images", "resolution", "detectors")}
        report["out"], report["sha256"] = args.out, save_reference(args.out, stats, meta)
    if reference is not None:
        report["compare"] = {"ref": args.compare, "ref_sha256": reference.sha256, **compute_metrics(stats, reference)}
    if is_main():
        print(json.dumps(report, indent=2), flush=True)
    return 0


def main(argv=None) -> int:
    return run_main(main_body, parse_args(argv), program="fid_ref")


if __name__ == "__main__":
    sys.exit(main())
