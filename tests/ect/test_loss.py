"""ECT objective: shared noise and dropout masks, stop-gradient target, r = 0 boundary, non-finite targets."""

import math

import torch

from ect_scale.config import ECTConfig
from ect_scale.ect import DiffusionLoss, ECTLoss, pseudo_huber, schedules, weighting


class SpyNet(torch.nn.Module):
    """Records every call: grad mode, inputs and the dropout-mask dict; output depends on a parameter."""

    def __init__(self, nan_on_second=False):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.9))
        self.calls = []
        self.nan_on_second = nan_on_second

    def forward(self, x, sigma, labels=None, *, dropout_masks=None, return_logvar=False):
        self.calls.append(
            dict(
                grad=torch.is_grad_enabled(),
                x=x.detach().clone(),
                sigma=sigma.detach().clone(),
                masks=dropout_masks,
                labels=labels,
            )
        )
        out = x * self.scale / (1 + sigma.view(-1, 1, 1, 1) ** 2)
        if self.nan_on_second and len(self.calls) == 2:
            out = out.clone()
            out[0] = float("nan")
        if return_logvar:
            return out, torch.zeros(x.shape[0], 1, 1, 1)
        return out


def _cfg(**kw):
    base = dict(q=2, stage_nimg=1000, c=0.0, weighting="inv_dt", P_mean=0.5, P_std=0.5)
    base.update(kw)
    return ECTConfig(**base)


def test_target_pass_is_stopgrad_with_same_masks_and_noise():
    net = SpyNet()
    masks = {"enc.x": torch.ones(1)}
    x0, labels = torch.randn(16, 2, 4, 4), torch.randint(3, (16,))
    gen = torch.Generator().manual_seed(0)
    out = ECTLoss(_cfg())(net, x0, labels, nimg=5000, generator=gen, dropout_masks=masks)
    assert len(net.calls) == 2
    online, target = net.calls
    assert online["grad"] and not target["grad"]
    assert online["masks"] is masks and target["masks"] is masks  # Same explicit masks in both passes.
    assert online["labels"] is labels and target["labels"] is labels
    # Shared epsilon: (x_t - x0)/t == (x_r - x0)/r.
    t, r = out.t.view(-1, 1, 1, 1), out.r.view(-1, 1, 1, 1)
    torch.testing.assert_close((online["x"] - x0) / t, (target["x"] - x0) / r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(online["sigma"], out.t)
    torch.testing.assert_close(target["sigma"], out.r)


def test_gradient_flows_only_through_online_pass():
    net = SpyNet()
    x0 = torch.randn(8, 2, 4, 4)
    cfg = _cfg()
    gen = torch.Generator().manual_seed(1)
    out = ECTLoss(cfg)(net, x0, None, nimg=10_000, generator=gen)
    out.loss.mean().backward()
    # Analytic gradient with the target held fixed: d/ds of w*||s*a - target|| where a = x_t/(1+t^2).
    gen = torch.Generator().manual_seed(1)
    t = schedules.sample_t(8, cfg, gen)
    r = schedules.t_to_r(t, 10_000, cfg)
    eps = torch.randn(x0.shape, generator=gen)
    x_t, x_r = x0 + t.view(-1, 1, 1, 1) * eps, x0 + r.view(-1, 1, 1, 1) * eps
    a = x_t / (1 + t.view(-1, 1, 1, 1) ** 2)
    tgt = torch.where((r > 0).view(-1, 1, 1, 1), 0.9 * x_r / (1 + r.view(-1, 1, 1, 1) ** 2), x0)
    s = torch.tensor(0.9, requires_grad=True)
    ref = (((s * a - tgt).flatten(1).square().sum(1)).sqrt() / (t - r)).mean()
    ref.backward()
    torch.testing.assert_close(net.scale.grad, s.grad, rtol=1e-4, atol=1e-6)


def test_whole_batch_at_r_zero_skips_target_network():
    net = SpyNet()
    cfg = _cfg(P_mean=-3.0, P_std=0.1)  # t ~ 0.05: r = 0 everywhere in the first q=2 stage.
    out = ECTLoss(cfg)(net, torch.randn(8, 2, 4, 4), None, nimg=0, generator=torch.Generator().manual_seed(0))
    assert len(net.calls) == 1 and bool((out.r == 0).all())
    # ...unless another rank needs the target pass (ZeRO-3): reduce_any decides globally.
    net2 = SpyNet()
    ECTLoss(cfg, reduce_any=lambda flag: True)(net2, torch.randn(8, 2, 4, 4), None, nimg=0)
    assert len(net2.calls) == 2


def test_r_zero_samples_target_x0():
    cfg = _cfg(P_mean=0.0, P_std=2.0)
    net = SpyNet()
    x0 = torch.randn(64, 2, 4, 4)
    out = ECTLoss(cfg)(net, x0, None, nimg=0, generator=torch.Generator().manual_seed(3))
    zero = out.r == 0
    assert zero.any() and (~zero).any()
    gen = torch.Generator().manual_seed(3)
    t = schedules.sample_t(64, cfg, gen)
    eps = torch.randn(x0.shape, generator=gen)
    f_t = 0.9 * (x0 + t.view(-1, 1, 1, 1) * eps) / (1 + t.view(-1, 1, 1, 1) ** 2)
    d = (f_t - x0).flatten(1).norm(dim=1)
    torch.testing.assert_close(out.distance[zero], d[zero], rtol=1e-4, atol=1e-5)


def test_nonfinite_target_is_dropped_and_counted():
    net = SpyNet(nan_on_second=True)
    cfg = _cfg(P_mean=2.0, P_std=0.1)  # t ~ 7: r > 0 for all samples.
    out = ECTLoss(cfg)(net, torch.randn(4, 2, 4, 4), None, nimg=0, generator=torch.Generator().manual_seed(0))
    assert int(out.nonfinite_targets) == 1
    assert torch.isfinite(out.loss).all() and out.loss[0] == 0
    out.loss.mean().backward()
    assert torch.isfinite(net.scale.grad)


def test_metric_and_weightings():
    sumsq = torch.tensor([0.0, 4.0, 9.0])
    torch.testing.assert_close(pseudo_huber(sumsq, 0.0), torch.tensor([0.0, 2.0, 3.0]))
    torch.testing.assert_close(pseudo_huber(sumsq, 0.06), (sumsq + 0.0036).sqrt() - 0.06)
    t, r = torch.tensor([0.5, 2.0]), torch.tensor([0.25, 1.0])
    torch.testing.assert_close(weighting(t, r, ECTConfig(weighting="snrpk")), 1 / t**2 + 4)
    torch.testing.assert_close(weighting(t, r, ECTConfig(weighting="inv_dt")), 1 / (t - r))
    # snrpk weighting equals 1 / c_out(t)^2.
    c_out = t * 0.5 / (t**2 + 0.25).sqrt()
    torch.testing.assert_close(weighting(t, r, ECTConfig(weighting="snrpk")), 1 / c_out**2)


def test_learned_uncertainty_option():
    net = SpyNet()
    cfg = _cfg(learned_uncertainty=True, P_mean=2.0, P_std=0.1)
    a = ECTLoss(cfg)(net, torch.ones(4, 2, 4, 4), None, nimg=0, generator=torch.Generator().manual_seed(0))
    b = ECTLoss(_cfg(P_mean=2.0, P_std=0.1))(
        SpyNet(), torch.ones(4, 2, 4, 4), None, nimg=0, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(a.loss, b.loss)  # u = 0: loss / exp(0) + 0.


def test_diffusion_loss_matches_edm2_formula():
    net = SpyNet()
    cfg = ECTConfig(objective="diffusion", P_mean=-0.4, P_std=1.0)
    x0 = torch.randn(8, 2, 4, 4)
    out = DiffusionLoss(cfg)(net, x0, None, 0, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    sigma = schedules.sample_t(8, cfg, gen)
    n = torch.randn(x0.shape, generator=gen) * sigma.view(-1, 1, 1, 1)
    D = 0.9 * (x0 + n) / (1 + sigma.view(-1, 1, 1, 1) ** 2)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    ref = lam * (D - x0).square().flatten(1).sum(1)
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-5)


def test_real_network_shares_dropout_masks(tiny_net):
    """With a real EDM2 net and dropout 0.5: the target pass with r -> t equals the online pass exactly."""
    net = tiny_net(dropout=0.5).train()
    x = torch.randn(3, 4, 16, 16)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    masks = net.sample_dropout_masks(3, torch.Generator().manual_seed(0))
    online = net(x, sigma, None, dropout_masks=masks)
    with torch.no_grad():
        target = net(x, sigma, None, dropout_masks=masks)
    assert torch.equal(online.detach(), target)
    assert math.isfinite(float(online.detach().sum()))
