"""Distillation objectives: CD against a reference written from Song et al. 2023 (not from the implementation), ECD
equal to ECT when the teacher step is exact, the teacher ODE step against the exact flow of Gaussian data,
guidance, distances and FLOP passes."""

import math

import pytest
import torch

from ect_scale.config import ConfigError, ECTConfig
from ect_scale.config.distill import DistillConfig
from ect_scale.ect import CDLoss, DistillNets, ECDLoss, ECTLoss, karras_levels, ode_step
from ect_scale.ect.distill import build_distance, guided


class Net(torch.nn.Module):
    """A small consistency-function stand-in with a parameter, labels and dropout masks that change its output."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))
        self.calls = []

    def forward(self, x, sigma, labels=None, *, dropout_masks=None):
        self.calls.append(dict(grad=torch.is_grad_enabled(), masks=dropout_masks, sigma=sigma.detach().clone()))
        s = sigma.view(-1, 1, 1, 1)
        out = torch.tanh(x * self.scale) / (1 + s) + x * s / (1 + s)
        if labels is not None:
            out = out + 0.01 * labels.view(-1, 1, 1, 1)
        if dropout_masks is not None:
            out = out * dropout_masks["m"]
        return out


def teacher(x, sigma, labels=None):
    """A smooth denoiser D(x; sigma) (no parameters)."""
    s = sigma.reshape(-1, 1, 1, 1)
    return 0.25 / (0.25 + s**2) * x + 0.1 * torch.sin(x) / (1 + s)


def test_karras_levels_follow_the_formula():
    n, lo, hi, rho = 18, 0.002, 80.0, 7.0
    levels = karras_levels(n, lo, hi, rho)
    for i in range(1, n + 1):  # Song et al. 2023, Sec. 4, i = 1..N.
        ref = (lo ** (1 / rho) + (i - 1) / (n - 1) * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho
        assert math.isclose(float(levels[i - 1]), ref, rel_tol=1e-6)
    assert (levels[1:] > levels[:-1]).all()


def _reference_cd(x0, labels, masks, online, target, seed, dcfg, c, t_max):
    """CD's loss from the paper, sample by sample in float64: Algorithm 2 with Eqs. 6-7, the Heun solver of EDM
    (Alg. 1) for Phi, lambda = 1. The random draws are replayed: n from a CPU generator, z from the other one."""
    n_levels, lo, hi, rho = dcfg.levels, dcfg.t_min, t_max, dcfg.rho
    t = [
        (lo ** (1 / rho) + (i - 1) / (n_levels - 1) * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho for i in range(1, 19)
    ]
    n = torch.randint(0, n_levels - 1, (x0.shape[0],), generator=torch.Generator().manual_seed(seed + 1)) + 1
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    losses = []
    for k in range(x0.shape[0]):
        t_next, t_n = t[n[k]], t[n[k] - 1]  # t_{n+1}, t_n (1-based in the paper).
        x_next = x0[k : k + 1].double() + t_next * z[k : k + 1].double()
        lab, m = labels[k : k + 1], {"m": masks["m"][k : k + 1]}

        def dxdt(x, tt, lab=lab):
            return (x - teacher(x.float(), torch.tensor([tt]), lab).double()) / tt

        d = dxdt(x_next, t_next)
        x_euler = x_next + (t_n - t_next) * d
        x_hat = x_next + (t_n - t_next) * 0.5 * (d + dxdt(x_euler, t_n))  # Eq. 6 with Heun.
        f_online = online(x_next.float(), torch.tensor([t_next]), lab, dropout_masks=m).double()
        f_target = target(x_hat.float(), torch.tensor([t_n]), lab, dropout_masks=m).double()
        sq = float(((f_online - f_target) ** 2).sum().detach())
        losses.append(sq if dcfg.distance == "l2_squared" else math.sqrt(sq + c * c) - c)  # lambda(t_n) = 1.
    return (
        torch.tensor(losses, dtype=torch.float64),
        torch.tensor([t[i] for i in n]),
        torch.tensor([t[i - 1] for i in n]),
    )


@pytest.mark.parametrize("distance", ["l2_squared", "pseudo_huber"])
def test_cd_target_and_loss_match_the_paper(distance):
    torch.manual_seed(0)
    x0, labels = torch.randn(12, 2, 3, 3) * 0.5, torch.randint(3, (12,)).float()
    masks = {"m": (torch.rand(12, 1, 1, 1) > 0.2).float() / 0.8}
    online, target = Net(0.9), Net(0.7)  # theta and theta- differ.
    cfg, dcfg = ECTConfig(weighting="none", c=0.03), DistillConfig(distance=distance)
    loss_fn = CDLoss(cfg, dcfg, DistillNets(teacher=teacher, target=target))
    seed = 11
    out = loss_fn(
        online,
        x0,
        labels,
        nimg=123,
        generator=torch.Generator().manual_seed(seed),
        dropout_masks=masks,
        t_generator=torch.Generator().manual_seed(seed + 1),
    )
    online.calls.clear(), target.calls.clear()
    ref, t_next, t_n = _reference_cd(x0, labels, masks, online, target, seed, dcfg, cfg.c, cfg.t_max)
    torch.testing.assert_close(out.t, t_next.float())
    torch.testing.assert_close(out.r, t_n.float())
    torch.testing.assert_close(out.loss.double(), ref, rtol=2e-5, atol=1e-6)
    assert int(out.nonfinite_targets) == 0
    # Gradients reach the online network only; theta- is a stop-gradient target.
    out.loss.mean().backward()
    assert online.scale.grad is not None and target.scale.grad is None


def test_cd_passes_share_dropout_masks_and_drop_nonfinite_targets():
    x0, masks = torch.randn(6, 1, 2, 2), {"m": torch.ones(6, 1, 1, 1)}
    online = Net(1.0)

    def bad_target(x, sigma, labels=None, dropout_masks=None):
        bad_target.masks = dropout_masks
        out = online(x, sigma, labels, dropout_masks=dropout_masks).detach().clone()
        out[2] = float("nan")
        return out

    loss_fn = CDLoss(
        ECTConfig(weighting="none", c=0.0), DistillConfig(solver="euler"), DistillNets(teacher, None, bad_target)
    )
    out = loss_fn(online, x0, None, 0, torch.Generator().manual_seed(0), masks)
    assert online.calls[0]["masks"] is masks and bad_target.masks is masks and online.calls[0]["grad"]
    assert int(out.nonfinite_targets) == 1 and float(out.loss[2].detach()) == 0.0 and torch.isfinite(out.loss).all()
    out.loss.sum().backward()
    assert torch.isfinite(online.scale.grad)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_ecd_equals_ect_when_the_teacher_step_is_exact(solver):
    """A teacher that returns x0 makes the ODE step land on x0 + r eps, ECT's x_r (some r are 0 at this stage)."""
    torch.manual_seed(1)
    x0, labels = torch.randn(32, 2, 4, 4), torch.randint(5, (32,))
    masks = {"m": (torch.rand(32, 1, 1, 1) > 0.3).float() / 0.7}
    cfg = ECTConfig(q=2, stage_nimg=1000, c=0.01, weighting="inv_dt", P_mean=0.0, P_std=1.2)
    calls = []

    def oracle(x, sigma, labels=None):
        calls.append(sigma.clone())
        return x0

    ect_net, ecd_net = Net(0.8), Net(0.8)
    kw = dict(nimg=1500, dropout_masks=masks)
    ect = ECTLoss(cfg)(ect_net, x0, labels, generator=torch.Generator().manual_seed(5), **kw)
    ecd_loss = ECDLoss(cfg, DistillConfig(solver=solver), DistillNets(teacher=oracle))
    ecd = ecd_loss(ecd_net, x0, labels, generator=torch.Generator().manual_seed(5), **kw)
    assert 0 < int((ect.r == 0).sum()) < 32  # Both kinds of target in the batch.
    torch.testing.assert_close(ecd.t, ect.t, rtol=0, atol=0)
    torch.testing.assert_close(ecd.r, ect.r, rtol=0, atol=0)
    torch.testing.assert_close(ecd.loss, ect.loss, rtol=1e-5, atol=1e-6)  # fp32 rounding of x_t + (r - t) eps.
    assert len(calls) == (2 if solver == "heun" else 1)
    assert all(bool((s > 0).all()) for s in calls)  # The teacher is never asked for sigma = 0.
    assert [c["masks"] for c in ecd_net.calls] == [masks, masks]
    ect.loss.mean().backward(), ecd.loss.mean().backward()
    torch.testing.assert_close(ecd_net.scale.grad, ect_net.scale.grad, rtol=1e-4, atol=1e-6)


def test_ecd_calls_no_teacher_when_every_r_is_zero():
    cfg = ECTConfig(q=2, stage_nimg=10**9, P_mean=-1.0, P_std=0.1)  # Stage 0, t ~ 0.37: n(t) / q > 1, so r = 0.
    calls = []
    loss = ECDLoss(cfg, DistillConfig(), DistillNets(teacher=lambda *a: calls.append(1)))
    out = loss(Net(1.0), torch.randn(4, 1, 2, 2), None, 0, torch.Generator().manual_seed(0))
    assert bool((out.r == 0).all()) and calls == []


def test_ode_step_follows_the_exact_flow_of_gaussian_data():
    """For data ~ N(0, sd^2) the ideal denoiser is D = sd^2/(sd^2+t^2) x and the probability-flow ODE carries x(t)
    to x(r) = x(t) sqrt((sd^2 + r^2)/(sd^2 + t^2)): Heun is second-order accurate, Euler first."""
    sd = 0.5

    def ideal(x, sigma, labels=None):
        s = sigma.reshape(-1, 1, 1, 1).double()
        return (sd**2 / (sd**2 + s**2) * x.double()).to(x.dtype)

    x = torch.randn(3, 1, 2, 2, dtype=torch.float64) * 2
    t = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    exact = lambda r: x * ((sd**2 + r**2) / (sd**2 + t**2)).sqrt().view(-1, 1, 1, 1)  # noqa: E731
    errors = {}
    for h in (0.1, 0.05):
        r = t * (1 - h)
        for solver in ("euler", "heun"):
            errors[solver, h] = float((ode_step(ideal, x, t, r, None, solver) - exact(r)).abs().max())
    assert errors["heun", 0.1] < 0.1 * errors["euler", 0.1]
    assert 3.5 < errors["euler", 0.1] / errors["euler", 0.05] < 4.5  # Local error O(h^2).
    assert 6.5 < errors["heun", 0.1] / errors["heun", 0.05] < 9.5  # Local error O(h^3).
    r0 = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)  # r = 0: the Euler step lands on D(x_t; t).
    out = ode_step(ideal, x, t, r0, None, "heun")
    torch.testing.assert_close(out[0], ideal(x, t)[0])


def test_guidance_combines_teacher_and_guide():
    x, s = torch.randn(2, 1, 2, 2), torch.ones(2)
    g = lambda x, sigma, labels: 0.5 * x  # noqa: E731
    d = guided(teacher, g, 2.05)(x, s, None)
    torch.testing.assert_close(d, g(x, s, None) + 2.05 * (teacher(x, s) - g(x, s, None)))
    assert guided(teacher, g, 1.0) is teacher and guided(teacher, None, 3.0) is teacher


def test_distances_and_flop_passes():
    a, b = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    assert build_distance(DistillConfig(distance="l2_squared"), 0.5)(a, b).tolist() == [4.0, 4.0]
    torch.testing.assert_close(build_distance(DistillConfig(), 0.5)(a, b), torch.full((2,), math.sqrt(4.25) - 0.5))
    with pytest.raises(ConfigError, match="distill.distance: lpips needs .* Fix: "):
        DistillConfig(distance="lpips").validate()
    nets = DistillNets(teacher, guide=teacher, target=Net(1.0))
    cd = CDLoss(ECTConfig(), DistillConfig(guidance=2.0), nets)
    assert cd.flop_passes() == {"online": 3.0, "target": 1.0, "teacher": 2.0, "guide": 2.0}
    ecd = ECDLoss(ECTConfig(), DistillConfig(solver="euler"), DistillNets(teacher))
    assert ecd.flop_passes() == {"online": 4.0, "teacher": 1.0}
