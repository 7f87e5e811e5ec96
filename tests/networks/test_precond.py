"""EDM preconditioning: coefficients, boundary behaviour, labels, dropout masks, precision."""

import math

import pytest
import torch

from ect_scale.networks import edm_coefficients


def test_coefficients_match_edm_table1():
    s = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_coefficients(s, 0.5)
    for i, sig in enumerate(s.tolist()):
        assert math.isclose(c_skip[i], 0.25 / (sig**2 + 0.25), rel_tol=1e-12)
        assert math.isclose(c_out[i], sig * 0.5 / math.sqrt(sig**2 + 0.25), rel_tol=1e-12)
        assert math.isclose(c_in[i], 1 / math.sqrt(sig**2 + 0.25), rel_tol=1e-12)
        assert math.isclose(c_noise[i], math.log(sig) / 4, rel_tol=1e-12)
    # Variance of D's inputs/outputs: c_skip^2 sigma_d^2 + c_out^2 ... = sigma_d^2 at every sigma (EDM's derivation).
    assert torch.allclose(c_in**2 * (0.25 + s**2), torch.ones(3, dtype=torch.float64))


def test_boundary_condition_small_sigma(tiny_net):
    """f(x, t) -> x as t -> 0 whatever F outputs (c_skip -> 1, c_out -> 0): the consistency boundary condition."""
    net = tiny_net().eval()
    x = torch.randn(2, 4, 16, 16)
    d = net(x, torch.full((2,), 1e-5), torch.randint(10, (2,)))
    assert (d - x).abs().max() < 1e-4


def test_zero_out_gain_gives_c_skip_x(tiny_net):
    net = tiny_net().eval()
    with torch.no_grad():
        net.unet.out_gain.zero_()  # EDM2 init: F == 0.
    x, sigma = torch.randn(3, 4, 16, 16), torch.tensor([0.1, 1.0, 10.0])
    expected = (0.25 / (sigma**2 + 0.25)).view(-1, 1, 1, 1) * x
    torch.testing.assert_close(net(x, sigma, None), expected)


def test_integer_and_onehot_labels_agree(tiny_net):
    net = tiny_net().eval()
    x, s = torch.randn(3, 4, 16, 16), torch.ones(3)
    ids = torch.tensor([1, 7, 3])
    torch.testing.assert_close(net(x, s, ids), net(x, s, torch.nn.functional.one_hot(ids, 10).float()))
    assert not torch.allclose(net(x, s, ids), net(x, s, torch.tensor([2, 7, 3])))


def test_explicit_dropout_masks_reproduce_the_pass(tiny_net):
    net = tiny_net(dropout=0.5).train()
    x, s, y = torch.randn(2, 4, 16, 16), torch.ones(2), torch.randint(10, (2,))
    masks = net.sample_dropout_masks(2, torch.Generator().manual_seed(0))
    assert set(masks) == set(net.dropout_mask_shapes(2)) and len(masks) > 0
    for m in masks.values():
        assert set(torch.unique(m).tolist()) <= {0.0, 2.0}
    a, b = net(x, s, y, dropout_masks=masks), net(x, s, y, dropout_masks=masks)
    assert torch.equal(a, b)
    assert not torch.equal(net(x, s, y), net(x, s, y))  # Implicit dropout draws fresh masks.
    ones = {k: torch.ones_like(v) for k, v in masks.items()}
    torch.testing.assert_close(net(x, s, y, dropout_masks=ones), net.eval()(x, s, y))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_compute_dtype_and_logvar(tiny_net, dtype):
    net = tiny_net(compute_dtype=dtype).eval().requires_grad_(False)
    x, s = torch.randn(2, 4, 16, 16), torch.tensor([0.5, 2.0])
    out, logvar = net(x, s, None, return_logvar=True)
    assert out.dtype == torch.float32 and logvar.shape == (2, 1, 1, 1)
    ref = tiny_net(compute_dtype="float32").eval().requires_grad_(False)(x, s, None)
    # bf16 main path: close to the fp32 network relative to the output's scale.
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max())
