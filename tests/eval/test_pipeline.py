"""End-to-end statistics: identical samples and statistics for world sizes 1 and 2, and the latent (VAE) decode
path. (Dataset statistics across ranks: tests/eval/test_tools.py, through tools/fid_ref.py.)"""

import numpy as np
import pytest
import torch

from ect_scale.data.encoders import LatentEncoder, PixelEncoder
from ect_scale.eval.detectors import InceptionV3Detector
from ect_scale.eval.pipeline import generated_stats, parse_seeds
from ect_scale.eval.sampling import consistency_spec
from tests.distributed import run_ranks

SEEDS = np.arange(100, 113)  # 13 seeds in batches of 4: uneven split over 2 ranks, a short last batch.


def tiny_pixel_net(seed=1, **overrides):
    from ect_scale.config import NetworkConfig, from_dict
    from ect_scale.networks import build_network

    torch.manual_seed(seed)
    net = build_network(from_dict(NetworkConfig, {"preset": "tiny-pixel", **overrides}, "network"))
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(0.7)  # Non-zero gains, so samples depend on the weights.
    return net.eval()


def _generate_worker(rank, world_size, inception_path):
    import torch.distributed as dist

    if world_size > 1:
        dist.init_process_group("gloo")
    detectors = {"fid": InceptionV3Detector(inception_path, "cpu")}
    specs = [consistency_spec(1, [1.2]), consistency_spec(2, [1.2])]
    images = {}

    def keep(name, seeds, batch):
        for s, img in zip(seeds.tolist(), batch):
            images[(name, s)] = img.clone()

    stats = generated_stats(
        tiny_pixel_net(), PixelEncoder(), detectors, SEEDS, specs, 4, "cpu", progress="none", on_images=keep
    )
    return {"images": images, "stats": {k: (v["fid"].mu, v["fid"].sigma, v["fid"].num) for k, v in stats.items()}}


def test_samples_and_statistics_identical_for_world_sizes_1_and_2(detector_files):
    one = run_ranks(_generate_worker, 1, args=(detector_files["inception"],), timeout=180)[0]
    two = run_ranks(_generate_worker, 2, args=(detector_files["inception"],), timeout=180)
    assert set(two[0]["images"]).isdisjoint(two[1]["images"])  # Each seed generated once, on one rank.
    merged = {**two[0]["images"], **two[1]["images"]}
    assert set(merged) == set(one["images"]) and len(merged) == 2 * len(SEEDS)
    for key, img in one["images"].items():
        assert img.dtype == torch.uint8 and torch.equal(merged[key], img), key  # Bitwise identical samples.
    for name, (mu, sigma, num) in one["stats"].items():
        for rank in range(2):
            mu2, sigma2, num2 = two[rank]["stats"][name]
            assert num == num2 == len(SEEDS)
            assert np.abs(mu2 - mu).max() <= 1e-12 * np.abs(mu).max()  # Summation order only.
            assert np.abs(sigma2 - sigma).max() <= 1e-12 * np.abs(sigma).max()
    assert not np.allclose(one["stats"]["1step"][0], one["stats"]["2step"][0])


def test_latent_networks_decode_through_the_vae(tmp_path, tiny_net, detector_files):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    vae.save_pretrained(tmp_path / "vae")
    encoder = LatentEncoder(vae=str(tmp_path / "vae"))
    seen = []
    stats = generated_stats(
        tiny_net(seed=2).eval(),
        encoder,
        {"fid": InceptionV3Detector(detector_files["inception"])},
        np.arange(3),
        [consistency_spec(1, [])],
        2,
        "cpu",
        progress="none",
        on_images=lambda name, seeds, imgs: seen.append(imgs),
    )
    assert [tuple(i.shape) for i in seen] == [(2, 3, 128, 128), (1, 3, 128, 128)]  # 16x16 latents, 8x VAE.
    assert all(i.dtype == torch.uint8 for i in seen) and stats["1step"]["fid"].num == 3


def test_parse_seeds():
    assert parse_seeds("0-3,7,10-11").tolist() == [0, 1, 2, 3, 7, 10, 11]
    with pytest.raises(ValueError, match="empty"):
        parse_seeds("5-2")
    with pytest.raises(ValueError, match="cannot parse"):
        parse_seeds("a-b")
