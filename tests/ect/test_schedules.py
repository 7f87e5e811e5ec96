"""ECT schedules as pure functions of images seen (locuslab/ect training/loss.py, the 'sigmoid' t -> r mapping) and
EDM2's LR decay."""

import math

import pytest
import torch

from ect_scale.config import ECTConfig
from ect_scale.ect import schedules

T = torch.tensor([0.002, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)

# r/t = 1 - n(t)/q^(s+1), n(t) = 1 + 8 sigmoid(-t), worked out by hand: q^(s+1) -> r/t at t = 0.002 / 0.1 / 1 / 10 / 80.
TABLE = {
    2: [0, 0, 0, 0.500, 0.500],
    4: [0, 0, 0.212, 0.750, 0.750],
    8: [0.376, 0.400, 0.606, 0.875, 0.875],
    16: [0.688, 0.700, 0.803, 0.9375, 0.9375],
    64: [0.922, 0.925, 0.951, 0.984, 0.984],
    256: [0.9805, 0.9812, 0.9877, 0.9961, 0.9961],
}


@pytest.mark.parametrize("qpow", sorted(TABLE))
def test_r_over_t_table(qpow):
    # Reach q^(s+1) = qpow both as q=2 at stage log2(qpow)-1 and (where possible) as q=qpow at stage 0.
    stage = int(math.log2(qpow)) - 1
    cfg = ECTConfig(q=2, stage_nimg=1000)
    r = schedules.t_to_r(T, stage * 1000, cfg)
    assert torch.allclose(r / T, torch.tensor(TABLE[qpow], dtype=torch.float64), atol=6e-4)
    r0 = schedules.t_to_r(T, 999, ECTConfig(q=qpow, stage_nimg=1000))
    assert torch.allclose(r0 / T, torch.tensor(TABLE[qpow], dtype=torch.float64), atol=6e-4)


def test_stage_counts_images_not_steps():
    cfg = ECTConfig(stage_nimg=3_200_000)
    assert schedules.stage_at(0, cfg) == 0
    assert schedules.stage_at(3_199_999, cfg) == 0
    assert schedules.stage_at(3_200_000, cfg) == 1
    assert schedules.stage_at(12_800_000, cfg) == 4


def test_r_zero_threshold_first_cifar_stage():
    cfg = ECTConfig(q=2, stage_nimg=1)
    t = torch.tensor([1.94, 1.95], dtype=torch.float64)
    r = schedules.t_to_r(t, 0, cfg)
    assert r[0] == 0 and r[1] > 0  # r = 0 for t <= 1.946 when q^(s+1) = 2.


def test_ratio_limit_and_const_mapping():
    cfg = ECTConfig(q=2, stage_nimg=1, ratio_limit=0.9961)
    assert float(schedules.ratio_at(T, 100, cfg).max()) <= 0.9961
    const = ECTConfig(q=4, stage_nimg=1, mapping="const")
    assert torch.allclose(schedules.ratio_at(T, 0, const), torch.full_like(T, 0.75))
    assert schedules.nominal_ratio(1, const) == pytest.approx(1 - 1 / 16)


def test_sample_t_is_lognormal():
    cfg = ECTConfig(P_mean=-0.8, P_std=1.6)
    t = schedules.sample_t(200_000, cfg, torch.Generator().manual_seed(0))
    logt = t.log()
    assert abs(float(logt.mean()) + 0.8) < 0.02 and abs(float(logt.std()) - 1.6) < 0.02
    assert float(t.max()) > 80  # Untruncated, as in ECT.


def test_learning_rate_inverse_sqrt_in_images():
    assert schedules.learning_rate(0, 1e-3, decay_nimg=256_000) == 1e-3
    assert schedules.learning_rate(256_000, 1e-3, decay_nimg=256_000) == 1e-3
    assert schedules.learning_rate(1_024_000, 1e-3, decay_nimg=256_000) == pytest.approx(5e-4)
    assert schedules.learning_rate(5_000_000, 0.01, decay_nimg=0, rampup_nimg=10_000_000) == pytest.approx(0.005)
    # EDM2 img512-s end of training: ref_lr / 3.87 at 2048Mi images with t_ref = 70000 batches of 2048.
    lr = schedules.learning_rate(2048 * 2**20, 0.01, decay_nimg=70_000 * 2048)
    assert lr == pytest.approx(0.01 / 3.87, rel=2e-3)
