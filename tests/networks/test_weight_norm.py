"""Forced weight normalisation is an explicit step (EDM2 Eq. 66) and never changes the network function."""

import math

import torch

from ect_scale.networks import forced_weight_norm_, max_row_norm_error, mp_weights, row_scale
from ect_scale.networks.layers import normalize


def test_forced_weight_norm_pins_rows_to_sqrt_fan_in(tiny_net):
    net = tiny_net()
    with torch.no_grad():
        for _, w, _ in mp_weights(net):
            w.mul_(torch.rand(w.shape[0], *([1] * (w.ndim - 1))) * 5 + 0.1)
    assert max_row_norm_error(net) > 0.5
    forced_weight_norm_(net)
    assert max_row_norm_error(net) < 2e-3  # |rms - 1| <= eps / (eps + rms_before): rows scaled by >= 0.1.


def test_forced_weight_norm_keeps_outputs(tiny_net):
    net = tiny_net().eval()
    with torch.no_grad():
        for _, w, _ in mp_weights(net):
            w.mul_(3.0)
    x, s = torch.randn(2, 4, 16, 16), torch.tensor([0.3, 3.0])
    before = net(x, s, None)
    forced_weight_norm_(net)
    torch.testing.assert_close(net(x, s, None), before, atol=2e-4, rtol=2e-4)


def test_row_scale_matches_normalize():
    w = torch.randn(6, 4, 3, 3) * 2
    fan = 4 * 9
    scaled = w * row_scale(w.flatten(1).square().sum(1), fan).view(-1, 1, 1, 1)
    torch.testing.assert_close(scaled, normalize(w))
    assert math.isclose(float(row_scale(torch.tensor([36.0]), 36)), 1 / (1e-4 + 1.0), rel_tol=1e-6)


def test_mp_weights_lists_every_mpconv(tiny_net):
    net = tiny_net()
    names = [n for n, _, _ in mp_weights(net)]
    assert "unet.out_conv.weight" in names and "logvar_linear.weight" in names
    params = dict(net.named_parameters())
    assert all(n in params for n in names)
    scalars = [n for n, p in params.items() if p.ndim == 0]
    assert all(n not in names for n in scalars)  # Gains are not normalised.
