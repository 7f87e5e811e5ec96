#!/usr/bin/env python3
"""Turn an image source into WebDataset tar shards plus manifest.json on any fsspec URL (local, s3://, gs://, ...).

    # The data of launchers/quickstart.sh (its exact command is there):
    # scikit-learn's 8x8 digits as grayscale pixels at their native resolution (no download).
    python tools/make_shards.py --source sklearn-digits --out data/digits --resolution 8 --pixels --grayscale

    # ImageNet-512 as SD-VAE latents (posterior mean and std, float16), 8 writers, straight to S3.
    torchrun --nproc_per_node 8 tools/make_shards.py --source /data/ILSVRC/Data/CLS-LOC/train \\
        --out s3://my-bucket/imagenet512-sdvae --resolution 512 --vae /models/sd-vae-ft-mse --num-shards 1024

    # A flat folder with a labels file (EDM2 dataset.json, or '<file> <label>' lines).
    python tools/make_shards.py --source imgs/ --labels labels.txt --out data/mine --resolution 64 --pixels

Images are center-cropped like EDM2/ADM (`center-crop-dhariwal`). Writers (--rank/--world-size, or torchrun's
RANK/WORLD_SIZE) split the shards deterministically; re-running the same command resumes: committed shards are
kept, anything unfinished is redone. Writer 0 writes manifest.json last, once every shard is committed.
Unreadable images are skipped, counted and listed in the manifest. See docs/data.md.
"""

import argparse
import os
import sys

from ect_scale.data.encoders import SD_VAE_ID
from ect_scale.data.storage import StorageOptions
from ect_scale.runtime import entry


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--source", required=True, help="image folder (class subfolders, or flat with --labels) or 'sklearn-digits'"
    )
    ap.add_argument("--labels", help="labels file for a flat folder: EDM2 dataset.json or '<file> <label>' lines")
    ap.add_argument("--out", required=True, help="output folder: local path or fsspec URL (s3://bucket/prefix)")
    ap.add_argument("--resolution", type=int, required=True, help="image resolution after the center crop")
    kind = ap.add_mutually_exclusive_group(required=True)
    kind.add_argument("--pixels", action="store_true", help="store uint8 RGB pixels [3,H,W]")
    kind.add_argument(
        "--vae",
        nargs="?",
        const=SD_VAE_ID,
        metavar="DIR_OR_ID",
        help=f"store SD-VAE posterior moments [8,H/8,W/8] (default id: {SD_VAE_ID})",
    )
    ap.add_argument("--grayscale", action="store_true", help="with --pixels: store 1-channel luma [1,H,W]")
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="latent storage dtype")
    ap.add_argument("--shard-size", type=int, default=1000, help="max samples per shard (default 1000)")
    ap.add_argument("--num-shards", type=int, help="exact shard count; best a multiple of GPUs x loader workers")
    ap.add_argument("--seed", type=int, default=0, help="seed of the permutation applied before sharding")
    ap.add_argument("--limit", type=int, help="convert only this many images (a random subset; for trial runs)")
    ap.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)), help="this writer (default $RANK)")
    ap.add_argument(
        "--world-size",
        type=int,
        default=int(os.environ.get("WORLD_SIZE", 1)),
        help="number of writers (default $WORLD_SIZE)",
    )
    ap.add_argument("--device", help="VAE device (default cuda:$LOCAL_RANK if available, else cpu)")
    ap.add_argument("--batch", type=int, default=32, help="images per VAE call")
    ap.add_argument("--io-threads", type=int, default=8, help="image decoding threads")
    ap.add_argument("--endpoint-url", help="S3-compatible endpoint (else FSSPEC_S3_ENDPOINT_URL / AWS_ENDPOINT_URL)")
    ap.add_argument("--verify", action="store_true", help="on resume, re-hash committed shards (default: sizes)")
    ap.add_argument("--finalize-only", action="store_true", help="only write manifest.json from the shard records")
    ap.add_argument("--wait-timeout-s", type=float, default=0.0, help="writer 0's wait for other writers (0 = forever)")
    ap.add_argument("--progress-s", type=float, default=10.0, help="seconds between progress lines")
    args = ap.parse_args(argv)
    if args.grayscale and not args.pixels:
        ap.error("--grayscale needs --pixels (latents have the VAE's channels)")
    if not 0 <= args.rank < args.world_size:
        ap.error(f"--rank {args.rank} must be in [0, --world-size={args.world_size})")
    if args.shard_size < 1 or (args.num_shards is not None and args.num_shards < 1):
        ap.error("--shard-size and --num-shards must be >= 1")
    return args


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def _main(argv) -> int:
    args = parse_args(argv)
    from ect_scale.data.convert import PixelConverter, VaeConverter
    from ect_scale.data.images import open_source
    from ect_scale.data.shard_writer import WriterOptions, finalize, plan_dict, plan_shards, write_shards

    opts = WriterOptions(
        resolution=args.resolution,
        shard_size=args.shard_size,
        num_shards=args.num_shards,
        seed=args.seed,
        limit=args.limit,
        rank=args.rank,
        world_size=args.world_size,
        batch=args.batch,
        io_threads=args.io_threads,
        verify=args.verify,
        wait_timeout_s=args.wait_timeout_s,
        progress_s=args.progress_s,
    )
    storage = StorageOptions(endpoint_url=args.endpoint_url)
    source = open_source(args.source, args.labels)
    converter = (
        PixelConverter(args.grayscale)
        if args.pixels
        else VaeConverter(args.vae, args.device or default_device(), args.dtype)
    )
    if args.finalize_only:
        shards = plan_shards(len(source), opts)
        finalize(args.out, len(shards), plan_dict(source, converter, opts, shards), storage, args.wait_timeout_s)
    else:
        write_shards(source, args.out, converter, opts, storage)
    return 0


def main(argv=None) -> int:
    return entry.run(lambda: _main(argv), program="make_shards")


if __name__ == "__main__":
    sys.exit(main())
