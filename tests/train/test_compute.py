"""Compute accounting (ect_scale.train.compute): FLOPs per image from the network's own count and the objective's
passes, records, and the compute an init file reports about its own training."""

import pytest

from ect_scale.config import ECTConfig, NetworkConfig, from_dict
from ect_scale.ect import build_objective
from ect_scale.networks.flops import model_stats
from ect_scale.train.compute import ComputeMeter, flops_per_image, init_compute


@pytest.fixture(scope="module")
def tiny_fwd():
    return model_stats(from_dict(NetworkConfig, {"preset": "tiny-latent"}, "network"))


def test_ect_counts_four_forward_passes_and_diffusion_three(tiny_fwd):
    fwd = tiny_fwd["fwd_flops"]
    ect = flops_per_image(build_objective(ECTConfig()).flop_passes(), {"online": fwd})
    diffusion = flops_per_image(build_objective(ECTConfig(objective="diffusion")).flop_passes(), {"online": fwd})
    assert ect == pytest.approx(4 * fwd) == pytest.approx(tiny_fwd["train_step_flops"])  # What MFU assumes.
    assert diffusion == pytest.approx(3 * fwd)
    assert flops_per_image({"online": 3, "teacher": 2}, {"online": fwd, "teacher": 10 * fwd}) == pytest.approx(23 * fwd)
    with pytest.raises(ValueError, match="teacher"):
        flops_per_image({"online": 3, "teacher": 2}, {"online": fwd})


def test_a_record_grows_with_images_and_hours():
    meter = ComputeMeter(flops_per_image=5e9, device_type="cuda")
    rec = meter.record(nimg=1_000, elapsed_sec=1_800, device_sec=7_200)
    assert rec.train_flops == 5e12 and rec.wall_hours == 0.5 and rec.device_hours == 2.0
    assert rec.scalars() == {"Compute/train_flops": 5e12, "Compute/device_hours": 2.0, "Compute/wall_hours": 0.5}
    assert rec.to_meta() == {"nimg": 1_000, "train_flops": 5e12}  # Deterministic: exports stay bit-identical.


def test_init_compute_is_read_from_the_file_never_invented(tiny_fwd):
    fwd = tiny_fwd["fwd_flops"]
    exported = {"source": "ect_scale", "compute": {"nimg": 57600, "train_flops": 1.5e15}}
    assert init_compute(exported, fwd) == {"Compute/init_train_flops": 1.5e15, "Compute/init_nimg": 57600.0}
    edm2 = {"edm2": {"nimg": 2_147_483_648}}  # An imported EDM2 snapshot: images seen, diffusion loss.
    assert init_compute(edm2, fwd) == {
        "Compute/init_train_flops": 3 * fwd * 2_147_483_648,
        "Compute/init_nimg": 2_147_483_648.0,
    }
    assert init_compute({}, fwd) == {} and init_compute({"edm2": {}}, fwd) == {}
