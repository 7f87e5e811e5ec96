"""Samplers: per-seed determinism independent of batching, and exactness on a Gaussian with known solutions."""

import math

import torch

from ect_scale.ect import SeedGenerators, consistency_sample, generate, heun_sample


class GaussianDenoiser(torch.nn.Module):
    """Exact denoiser of data ~ N(0, s^2 I): D(x, sigma) = x s^2 / (s^2 + sigma^2)."""

    img_channels, img_resolution, label_dim = 2, 4, 0

    def __init__(self, s=0.5):
        super().__init__()
        self.s = s

    def forward(self, x, sigma, labels=None, **kw):
        sig = sigma.to(x.dtype).view(-1, 1, 1, 1)
        return x * self.s**2 / (self.s**2 + sig**2)


class GaussianConsistency(GaussianDenoiser):
    """Exact consistency function of the PF-ODE for Gaussian data: f(x, t) = x s / sqrt(s^2 + t^2)."""

    def forward(self, x, sigma, labels=None, **kw):
        sig = sigma.to(x.dtype).view(-1, 1, 1, 1)
        return x * self.s / (self.s**2 + sig**2).sqrt()


def test_heun_solves_the_probability_flow_ode_to_second_order():
    """The PF-ODE of Gaussian data maps x(80) = 80 z to x(0) = 80 z s / sqrt(s^2 + 80^2); Heun converges as N^-2."""
    z = SeedGenerators(range(200), "cpu").randn([2, 4, 4]).double()
    exact = z * 0.5 * 80 / math.sqrt(0.25 + 80**2)

    def rel_err(n):
        x = heun_sample(GaussianDenoiser(0.5), z, None, num_steps=n)
        return float(((x - exact).abs() / exact.abs()).max())

    e32, e64 = rel_err(32), rel_err(64)
    assert e32 < 0.02
    assert 3.5 < e32 / e64 < 4.5  # Second order.
    euler = heun_sample(GaussianDenoiser(0.5), z, None, num_steps=64, order=1)
    assert float(((euler - exact).abs() / exact.abs()).max()) > 5 * e64  # First order is much worse.


def test_consistency_sampler_with_exact_consistency_function():
    rng = SeedGenerators(range(2000), "cpu")
    z = rng.randn([2, 4, 4])
    x1 = consistency_sample(GaussianConsistency(0.5), z, None, rng)
    exact = (z.double() * 80 * 0.5 / math.sqrt(0.25 + 6400)).float()
    torch.testing.assert_close(x1, exact)
    x2 = consistency_sample(GaussianConsistency(0.5), z, None, SeedGenerators(range(2000), "cpu"), t_mid=[1.526])
    assert abs(float(x2.std()) - 0.5) < 0.02  # Re-noising at t_mid and mapping back keeps the data std.


def test_samples_depend_only_on_seed_not_batching(tiny_net):
    net = tiny_net(seed=2).eval()
    seeds = list(range(10, 17))
    full = generate(net, seeds, "cpu", t_mid=[1.0])
    parts = torch.cat([generate(net, seeds[:3], "cpu", t_mid=[1.0]), generate(net, seeds[3:], "cpu", t_mid=[1.0])])
    torch.testing.assert_close(parts, full, atol=1e-5, rtol=1e-5)
    single = generate(net, [seeds[4]], "cpu", t_mid=[1.0])
    torch.testing.assert_close(single[0], full[4], atol=1e-5, rtol=1e-5)
    other = generate(net, [99], "cpu", t_mid=[1.0])
    assert not torch.allclose(other[0], full[0])


def test_heun_generate_labels_from_seed(tiny_net):
    net = tiny_net(seed=1).eval()
    a = generate(net, [3, 4], "cpu", sampler="heun", num_steps=4)
    b = generate(net, [4], "cpu", sampler="heun", num_steps=4)
    torch.testing.assert_close(a[1], b[0], atol=1e-4, rtol=1e-4)  # Batched conv reduction order only.
