"""Magnitude preservation of the MP primitives (EDM2 App. B): unit-variance inputs give unit-variance outputs."""

import math

import torch

from ect_scale.networks.layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample


def rms(x):
    return float(x.detach().double().square().mean().sqrt())


def test_mp_silu_preserves_magnitude():
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    assert abs(rms(mp_silu(x)) - 1) < 0.01


def test_mp_sum_and_cat_preserve_magnitude():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(200_000, generator=g), torch.randn(200_000, generator=g)
    for t in (0.3, 0.5, 0.8):
        assert abs(rms(mp_sum(a, b, t)) - 1) < 0.01
    a2, b2 = torch.randn(4, 48, 32, 32, generator=g), torch.randn(4, 16, 32, 32, generator=g)
    assert abs(rms(mp_cat(a2, b2, t=0.5)) - 1) < 0.01
    # The balance t splits the magnitude between the parts as (1-t) : t.
    out = mp_cat(a2, b2, t=0.3)
    ratio = rms(out[:, 48:]) / rms(out[:, :48])
    assert abs(ratio - (0.3 / 0.7) * math.sqrt(64 / 16) * math.sqrt(48 / 64)) < 0.05


def test_normalize_gives_unit_rms_rows():
    w = torch.randn(7, 5, 3, 3) * 13.0
    n = normalize(w)
    per_row = n.flatten(1).square().mean(1).sqrt()
    assert torch.allclose(per_row, torch.ones(7), atol=1e-3)
    x = torch.randn(2, 9, 4, 4) * 5
    assert torch.allclose(normalize(x, dim=1).square().mean(1), torch.ones(2, 4, 4), atol=1e-3)


def test_mpconv_output_has_unit_magnitude_for_any_weight_scale():
    torch.manual_seed(0)
    conv = MPConv(64, 32, kernel=[3, 3])
    with torch.no_grad():
        conv.weight.mul_(37.0)  # Weight scale must not matter (weight normalisation inside forward).
    x = torch.randn(8, 64, 16, 16)
    y = conv(x)
    # Interior pixels (no zero padding) have unit variance.
    assert abs(rms(y[:, :, 1:-1, 1:-1]) - 1) < 0.05
    lin = MPConv(256, 128, kernel=[])
    assert abs(rms(lin(torch.randn(512, 256))) - 1) < 0.05
    assert abs(rms(lin(torch.randn(512, 256), gain=2.0)) - 2) < 0.1


def test_mpfourier_unit_magnitude_and_buffers():
    f = MPFourier(512)
    assert {n for n, _ in f.named_buffers()} == {"freqs", "phases"}
    assert list(f.parameters()) == []
    y = f(torch.randn(1000))
    assert abs(rms(y) - 1) < 0.05


def test_resample_down_is_average_and_up_is_nearest():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    down = resample(x, "down")
    assert torch.allclose(down, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    up = resample(down, "up")
    assert up.shape == x.shape and torch.allclose(up[0, 0, :2, :2], torch.full((2, 2), 2.5))
    assert resample(x, "keep") is x
