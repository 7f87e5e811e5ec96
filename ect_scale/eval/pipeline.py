"""The evaluation pipeline: per-seed samples -> encoder.decode -> uint8 -> detectors -> rank-local float64 sums
-> one all-reduce -> Gaussian statistics -> Fréchet distances to the reference.

`generated_stats` and `dataset_stats` are collective: every rank calls them with the same arguments.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from ect_scale.eval.detectors import Detector
from ect_scale.eval.progress import Progress, ProgressMode, StageTimer, stage
from ect_scale.eval.refs import ReferenceStats
from ect_scale.eval.sampling import SamplerSpec, rank_batches, sample_many
from ect_scale.eval.stats import FeatureStats, GaussianStats, fd_between, reduce_stats
from ect_scale.runtime.dist import get_rank, get_world_size, print0

ImagesHook = Callable[[str, np.ndarray, torch.Tensor], None]


@contextlib.contextmanager
def eval_mode(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Evaluate `net` in eval mode (no dropout; locuslab/ect#21) and restore its previous mode afterwards."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def parse_seeds(text: str) -> np.ndarray:
    """'0-49999' or '0,5,10-19' -> int64 array (EDM2's seed-list syntax)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ValueError(f"seed range {part!r} is empty. Fix: write LOW-HIGH with LOW <= HIGH, e.g. 0-49999")
            seeds.extend(range(lo, hi + 1))
        elif part.isdigit():
            seeds.append(int(part))
        else:
            raise ValueError(f"cannot parse seeds {text!r} at {part!r}. Fix: write e.g. 0-49999 or 0,5,10-19")
    return np.asarray(seeds, dtype=np.int64)


def _accumulators(names: Iterable[str], detectors: dict[str, Detector], device) -> dict[tuple[str, str], FeatureStats]:
    return {(n, m): FeatureStats(d.feature_dim, device) for n in names for m, d in detectors.items()}


def _detect(
    images: torch.Tensor,
    name: str,
    detectors: dict[str, Detector],
    accs: dict[tuple[str, str], FeatureStats],
    timer: Optional[StageTimer],
) -> None:
    for metric, det in detectors.items():
        with stage(timer, metric, images.shape[0]):
            accs[(name, metric)].update(det(images))


def _finish(accs: dict[tuple[str, str], FeatureStats]) -> dict[str, dict[str, GaussianStats]]:
    reduce_stats(list(accs.values()))  # The one collective of the whole evaluation.
    out: dict[str, dict[str, GaussianStats]] = {}
    for (name, metric), acc in accs.items():
        out.setdefault(name, {})[metric] = acc.gaussian()
    return out


def generated_stats(
    net: torch.nn.Module,
    encoder,
    detectors: dict[str, Detector],
    seeds: Sequence[int],
    specs: Sequence[SamplerSpec],
    batch_gpu: int,
    device,
    progress: ProgressMode = "auto",
    desc: str = "eval",
    timer: Optional[StageTimer] = None,
    on_images: Optional[ImagesHook] = None,
) -> dict[str, dict[str, GaussianStats]]:
    """sampler name -> metric -> statistics of the generated images (collective; `net` runs in eval mode).

    `on_images(sampler_name, seeds, uint8_images)` sees every decoded batch on the rank that made it.
    """
    seeds = np.asarray(seeds, dtype=np.int64)
    accs = _accumulators([s.name for s in specs], detectors, device)
    batches = rank_batches(len(seeds), batch_gpu, get_rank(), get_world_size())
    with eval_mode(net), Progress(len(seeds), desc, mode=progress) as bar:
        for idx in batches:
            batch_seeds = seeds[idx]
            with stage(timer, "sample", len(idx) * len(specs)):
                samples = sample_many(net, batch_seeds, specs, device)
            for name, x in samples.items():
                with stage(timer, "decode", len(idx)):
                    images = encoder.decode(x)
                if on_images is not None:
                    on_images(name, batch_seeds, images)
                _detect(images, name, detectors, accs, timer)
            bar.advance(len(idx))
    return _finish(accs)


def dataset_stats(
    batches: Iterable[torch.Tensor],
    num_images: int,
    detectors: dict[str, Detector],
    device,
    progress: ProgressMode = "auto",
    desc: str = "ref",
    timer: Optional[StageTimer] = None,
) -> dict[str, GaussianStats]:
    """metric -> statistics of uint8 image batches (this rank's share of the dataset; collective)."""
    accs = _accumulators(["data"], detectors, device)
    with Progress(num_images, desc, mode=progress) as bar:
        for images in batches:
            images = images.to(device, non_blocking=True)
            _detect(images, "data", detectors, accs, timer)
            bar.advance(images.shape[0])
    return _finish(accs)["data"]


def compute_metrics(stats: dict[str, GaussianStats], reference: ReferenceStats) -> dict[str, float]:
    """metric -> Fréchet distance between generated and reference statistics."""
    return {metric: fd_between(s, reference.require(metric, s.feature_dim)) for metric, s in stats.items()}


def load_for_eval(path: str, device, vae_path: Optional[str] = None, encoder_kind: Optional[str] = None):
    """(net in eval mode without gradients, meta, encoder) for a network file (`netfile.load_network_file`).

    The encoder comes from `meta["encoder"]`; files without one get pixels (3 channels) or EDM2's SD-VAE latent
    normalisation (4 channels). `vae_path` points at a local SD-VAE directory (offline clusters).
    """
    from ect_scale.data.encoders import PixelEncoder, build_encoder
    from ect_scale.networks.netfile import load_network_file

    net, meta = load_network_file(path, device=device)
    net.eval().requires_grad_(False)
    description = meta.get("encoder")
    if encoder_kind is not None:
        description = {"kind": encoder_kind} if encoder_kind != (description or {}).get("kind") else description
    if description is None:
        description = (
            {"kind": "pixels", "channels": net.img_channels} if net.img_channels in (1, 3) else {"kind": "sd-vae"}
        )
        print0(
            f"[eval] {path} names no encoder; assuming {description['kind']} "
            "(EDM2's normalisation). Pass --encoder to choose"
        )
    encoder = build_encoder(description, vae_path)
    if isinstance(encoder, PixelEncoder) and net.img_channels != encoder.raw_channels:
        raise ValueError(
            f"{path}: a {net.img_channels}-channel network cannot use the pixel encoder. "
            "Fix: pass --encoder sd-vae (and --vae DIR)"
        )
    return net, meta, encoder
