#!/usr/bin/env python3
"""Benchmark a 50k-sample 2-step FID of EDM2-S img512: sampling + SD-VAE decode + Inception, on 1..N GPUs.

    python tools/bench_fid.py --gpus 1,8                      # runs torchrun per GPU count; one JSON summary
    torchrun --standalone --nproc_per_node=8 tools/bench_fid.py --num-samples 50000   # one measurement

No weights are needed: the network (EDM2-S preset), the SD-VAE decoder (a diffusers `AutoencoderKL` built from
sd-vae-ft-mse's config, 83.65M parameters) and the detector (torchvision's Inception-v3, 2048-d pool features,
resized to 299x299 inside) are randomly initialised with the real architectures, so their cost is the real
cost. `--inception FILE` uses NVIDIA's TorchScript instead. The pipeline is the library's (`generated_stats`),
with CUDA synchronised at stage boundaries to charge each stage its own time. With --num-samples below 50000 the 50k
wall time is extrapolated from the measured per-image rate and labelled as such.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from ect_scale.eval.stats import frechet_distance
from ect_scale.runtime import entry
from ect_scale.runtime.dist import get_world_size, init_from_env, is_main

RESULT_PREFIX = "BENCH_RESULT "
# diffusers AutoencoderKL config of stabilityai/sd-vae-ft-mse (the SD v1 KL-f8 autoencoder).
SD_VAE_FT_MSE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=256,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
TINY_VAE_CONFIG = dict(SD_VAE_FT_MSE_CONFIG, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)


class TorchvisionInception(torch.nn.Module):
    """Inception-v3 with the call signature of NVIDIA's TorchScript: uint8 in, resize to 299 inside, 2048-d out."""

    def __init__(self):
        super().__init__()
        try:
            from torchvision.models import inception_v3
        except ImportError:
            raise SystemExit(
                "bench_fid.py: torchvision is needed for the random-weight Inception-v3 "
                "(pip install torchvision), or pass --inception inception-2015-12-05.pt"
            ) from None
        self.net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        self.net.fc = torch.nn.Identity()

    def forward(self, img: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        x = F.interpolate(img.to(torch.float32), size=(299, 299), mode="bilinear", align_corners=False)
        return self.net((x - 128) / 128)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", default=None, help="driver mode: comma list of GPU counts, each run under torchrun")
    ap.add_argument(
        "--num-samples",
        dest="num",
        type=int,
        default=50_000,
        help="samples (below 50000 the 50k wall time is extrapolated)",
    )
    ap.add_argument("--preset", default="edm2-img512-s", help="network preset (random weights)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="network dtype")
    ap.add_argument("--steps", type=int, default=2, help="consistency steps (t_mid 0.98 for 2 steps)")
    ap.add_argument("--batch-gpu", type=int, default=64, help="samples per GPU per batch")
    ap.add_argument("--decode-batch", type=int, default=8, help="VAE decode chunk size")
    ap.add_argument("--vae-config", default="sd-vae-ft-mse", choices=["sd-vae-ft-mse", "tiny"], help="tiny: CPU tests")
    ap.add_argument(
        "--inception",
        default=None,
        help="NVIDIA TorchScript inception-2015-12-05.pt (default: torchvision, random weights)",
    )
    ap.add_argument("--warmup-batches", type=int, default=1, help="untimed batches per GPU first")
    ap.add_argument("--device", default="auto", help="auto = cuda:LOCAL_RANK, else cpu")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def build_vae_dir(config_name: str) -> str:
    """Rank 0 writes a random-weight AutoencoderKL with the real architecture to a temp dir; all ranks load it."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise SystemExit(
            "bench_fid.py: the SD-VAE decoder needs diffusers (pip install diffusers, or the wheel "
            "carried to this machine); nothing else here needs it"
        ) from None
    holder = [None]
    if is_main():
        torch.manual_seed(0)
        config = SD_VAE_FT_MSE_CONFIG if config_name == "sd-vae-ft-mse" else TINY_VAE_CONFIG
        holder[0] = tempfile.mkdtemp(prefix="bench-vae-")
        AutoencoderKL(**config).save_pretrained(holder[0])
    if get_world_size() > 1:
        torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def build_pipeline(args, device):
    from ect_scale.config import NetworkConfig, from_dict
    from ect_scale.data.encoders import LatentEncoder, PixelEncoder
    from ect_scale.eval.detectors import InceptionV3Detector
    from ect_scale.networks import build_network

    torch.manual_seed(0)
    cfg = from_dict(NetworkConfig, {"preset": args.preset, "compute_dtype": args.dtype}, "network")
    net = build_network(cfg).eval().requires_grad_(False).to(device)
    encoder = (
        LatentEncoder(vae=build_vae_dir(args.vae_config), decode_batch=args.decode_batch)
        if net.img_channels == 4
        else PixelEncoder()
    )
    if args.inception:
        detector = InceptionV3Detector(args.inception, device)
    else:
        detector = InceptionV3Detector.from_module(TorchvisionInception(), device, "torchvision inception_v3 (random)")
    return net, encoder, {"fid": detector}


def measure(args, device) -> dict:
    from ect_scale.eval.pipeline import generated_stats
    from ect_scale.eval.progress import StageTimer
    from ect_scale.eval.sampling import consistency_spec

    t_setup = time.perf_counter()
    net, encoder, detectors = build_pipeline(args, device)
    specs = [consistency_spec(args.steps, [0.98, 0.5, 0.2][: args.steps - 1])]
    world = get_world_size()
    warm = args.warmup_batches * args.batch_gpu * world
    if warm:
        generated_stats(
            net, encoder, detectors, np.arange(10**9, 10**9 + warm), specs, args.batch_gpu, device, progress="none"
        )
    setup_s = time.perf_counter() - t_setup
    timer = StageTimer(device, sync=True)
    t0 = time.perf_counter()
    stats = generated_stats(
        net,
        encoder,
        detectors,
        np.arange(args.num),
        specs,
        args.batch_gpu,
        device,
        progress="plain",
        desc=f"bench {world} GPU(s)",
        timer=timer,
    )
    loop_s = time.perf_counter() - t0
    if is_main() and hasattr(encoder, "vae_name") and encoder.vae_name.startswith(tempfile.gettempdir()):
        shutil.rmtree(encoder.vae_name, ignore_errors=True)  # Every rank has loaded it (the reduce synchronised).
    g = stats[specs[0].name]["fid"]
    t1 = time.perf_counter()
    frechet_distance(g.mu, g.sigma, g.mu + 1.0, g.sigma)  # The metric's own cost (eigh of two 2048^2 matrices).
    fd_s = time.perf_counter() - t1
    wall_s = loop_s + fd_s
    out = {
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpus": world,
        "preset": args.preset,
        "dtype": args.dtype,
        "steps": args.steps,
        "nfe": specs[0].nfe,
        "num": args.num,
        "batch_gpu": args.batch_gpu,
        "detector": detectors["fid"].source,
        "vae": args.vae_config,
        "setup_s": round(setup_s, 2),
        "wall_s": round(wall_s, 2),
        "fd_s": round(fd_s, 3),
        "img_per_s": round(args.num / wall_s, 2),
        "stages_rank0": timer.summary(),
        "torch": torch.__version__,
    }
    if args.num < 50_000:
        out["extrapolated_wall_50k_s"] = round(loop_s * 50_000 / args.num + fd_s, 1)
        out["note"] = f"extrapolated_wall_50k_s is extrapolated linearly from {args.num} samples, not measured"
    else:
        out["wall_50k_s"] = round(loop_s * 50_000 / args.num + fd_s, 1)
    return out


def driver(args, argv) -> int:
    """Run one torchrun job per GPU count and print the results with the speedup over the first count."""
    counts = [int(c) for c in args.gpus.split(",") if c.strip()]
    available = torch.cuda.device_count()
    if args.device in ("auto", "cuda") and available and max(counts) > available:
        raise SystemExit(f"--gpus: asked for {max(counts)} GPUs, this machine has {available}")
    worker_argv = [a for i, a in enumerate(argv) if not a.startswith("--gpus") and (i == 0 or argv[i - 1] != "--gpus")]
    results = []
    for n in counts:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            os.path.abspath(__file__),
            *worker_argv,
        ]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(proc.stdout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"bench_fid.py: the {n}-GPU run failed (exit code {proc.returncode})")
        results.append(json.loads(lines[-1][len(RESULT_PREFIX) :]))
    key = "wall_50k_s" if "wall_50k_s" in results[0] else "extrapolated_wall_50k_s"
    for r in results:
        r["speedup_vs_first"] = round(results[0][key] / r[key], 2)
    print(json.dumps({"runs": results, "compared_on": key}, indent=2), flush=True)
    return 0


def _main(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.gpus and "WORLD_SIZE" not in os.environ:
        return driver(args, argv)
    device = init_from_env(args.device)
    result = measure(args, device)
    if is_main():
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def main(argv=None) -> int:
    return entry.run(lambda: _main(argv), program="bench_fid")


if __name__ == "__main__":
    sys.exit(main())
