"""ECT's consistency-tuning objective and EDM2's diffusion loss, as functions returning per-sample losses.

ECT (Geng et al. 2024, "Consistency Models Made Easy"; locuslab/ect training/loss.py), one shared epsilon and one
shared set of
dropout masks:
    x_t = x0 + t eps,  x_r = x0 + r eps                                    (shared noise direction)
    Delta = f(x_t, t) - sg[f(x_r, r)]     with f(x_r, r) := x0 where r = 0  (boundary condition)
    d = sqrt(||Delta||_2^2 + c^2) - c                                      (pseudo-Huber; c = 0: L2 norm)
    loss_i = w(t, r) d                                                     (ECT Eq. 19 with its weightings)
The target uses the same online network, in train mode, under no_grad, with the same dropout masks;
forced weight normalisation is a separate post-step operation, so the target pass never renormalises.
The caller reduces the per-sample losses (mean over the global batch; see `trainer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ect_scale.config.ect import ECTConfig
from ect_scale.ect import schedules

Net = Callable[..., torch.Tensor]


@dataclass
class LossOutput:
    loss: torch.Tensor  # [N] weighted per-sample loss (what is averaged and backpropagated).
    t: torch.Tensor  # [N] noise level of the online pass.
    r: torch.Tensor  # [N] noise level of the target pass (0 = clean target).
    distance: torch.Tensor  # [N] unweighted distance d (detached).
    nonfinite_targets: torch.Tensor  # [] number of samples whose target was not finite (dropped from the loss).


def _flat_sumsq(x: torch.Tensor) -> torch.Tensor:
    return x.square().flatten(1).sum(1)


def weighting(t: torch.Tensor, r: torch.Tensor, cfg: ECTConfig) -> torch.Tensor:
    """w(t, r): 'snrpk' = 1/t^2 + 1/sigma_d^2 = 1/c_out(t)^2 (ImageNet); 'inv_dt' = 1/(t - r) (CIFAR); 'none' = 1."""
    if cfg.weighting == "snrpk":
        return (t**2 + cfg.sigma_data**2) / (t * cfg.sigma_data) ** 2
    if cfg.weighting == "inv_dt":
        return 1 / (t - r)
    return torch.ones_like(t)


def pseudo_huber(sumsq: torch.Tensor, c: float) -> torch.Tensor:
    """d = sqrt(||Delta||^2 + c^2) - c; the non-squared L2 norm when c = 0 (ECT `loss.py`)."""
    if c > 0:
        return (sumsq + c * c).sqrt() - c
    return sumsq.sqrt()


# A distance d(f_online, f_target) -> [N] per sample (the online output keeps its gradient).
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def huber_distance(c: float) -> Distance:
    """ECT's d: pseudo-Huber of the per-sample difference with constant c (L2 norm at c = 0)."""
    return lambda a, b: pseudo_huber(_flat_sumsq(a - b), c)


class ECTLoss:
    """ECT objective. `reduce_any` turns a local "some r > 0" flag into a global decision (needed under ZeRO-3,
    where every rank must run the same forward passes); the default is local."""

    def __init__(
        self,
        cfg: ECTConfig,
        reduce_any: Optional[Callable[[bool], bool]] = None,
        distance: Optional[Distance] = None,
    ):
        self.cfg = cfg
        self.reduce_any = reduce_any or (lambda flag: flag)
        self.distance = distance or huber_distance(cfg.c)

    def flop_passes(self) -> dict[str, float]:
        """Forward-pass equivalents per image, by network: the online forward with its backward (3) and the
        stop-gradient target forward (1). Counted nominally, as MFU is (see `train.compute`)."""
        return {"online": 4.0}

    def __call__(
        self,
        net: Net,
        x0: torch.Tensor,
        labels: Optional[torch.Tensor],
        nimg: int,
        generator: Optional[torch.Generator] = None,
        dropout_masks: Optional[dict[str, torch.Tensor]] = None,
        t_generator: Optional[torch.Generator] = None,
    ) -> LossOutput:
        """`t_generator` (a CPU generator) draws t on the host, so deciding whether the target pass is needed
        costs no device synchronisation; otherwise t comes from `generator`."""
        cfg = self.cfg
        n = x0.shape[0]
        x0 = x0.to(torch.float32)
        if t_generator is not None:
            t_host = schedules.sample_t(n, cfg, t_generator, "cpu")
            r_host = schedules.t_to_r(t_host, nimg, cfg)
            any_positive = bool((r_host > 0).any())
            t, r = t_host.to(x0.device, non_blocking=True), r_host.to(x0.device, non_blocking=True)
        else:
            t = schedules.sample_t(n, cfg, generator, x0.device)
            r = schedules.t_to_r(t, nimg, cfg)
            any_positive = None
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        t4 = t.view(-1, 1, 1, 1)
        x_t = x0 + t4 * eps
        x_r = self.target_point(x0, x_t, eps, t, r, labels, any_positive)

        if cfg.learned_uncertainty:
            f_t, logvar = net(x_t, t, labels, dropout_masks=dropout_masks, return_logvar=True)
        else:
            f_t, logvar = net(x_t, t, labels, dropout_masks=dropout_masks), None

        target, nonfinite = self.target(net, x0, x_r, r, labels, dropout_masks, any_positive)
        d = self.distance(f_t, target)
        loss = d * weighting(t, r, cfg)
        if logvar is not None:
            u = logvar.flatten()
            loss = loss / u.exp() + u  # Learned uncertainty (EDM2 Eq. 21 applied per sample).
        loss = torch.where(nonfinite, torch.zeros_like(loss), loss)
        return LossOutput(loss=loss, t=t, r=r, distance=d.detach(), nonfinite_targets=nonfinite.sum())

    def target_point(self, x0, x_t, eps, t, r, labels, any_positive: Optional[bool] = None) -> torch.Tensor:
        """x_r = x0 + r eps: the point on the same noise direction (ECT; `ect.distill.ECDLoss` takes a teacher
        ODE step from x_t instead)."""
        return x0 + r.view(-1, 1, 1, 1) * eps

    @torch.no_grad()
    def target(self, net: Net, x0, x_r, r, labels, dropout_masks, any_positive: Optional[bool] = None):
        """sg[f(x_r, r)] with the online weights and the same dropout masks; x0 where r = 0.

        Returns (target, nonfinite[N]). Samples whose target is not finite are flagged so the caller drops
        them instead of letting NaN/Inf reach the loss (ECT applies nan_to_num; we exclude and count them).
        """
        positive = r > 0
        local_any = any_positive if any_positive is not None else bool(positive.any())
        if not self.reduce_any(local_any):
            return x0, torch.zeros_like(positive)  # Whole batch at r = 0: no network call.
        f_r = net(x_r, r, labels, dropout_masks=dropout_masks).to(torch.float32)
        finite = torch.isfinite(f_r).flatten(1).all(1)
        use_net = (positive & finite).view(-1, 1, 1, 1)
        target = torch.where(use_net, torch.nan_to_num(f_r), x0)
        return target, positive & ~finite


class DiffusionLoss:
    """EDM2's denoising loss with learned uncertainty (EDM2 Eq. 21; NVlabs/edm2
    training/training_loop.py, EDM2Loss), summed over C,H,W:
    loss_i = sum_j [ lambda(sigma)/exp(u(sigma)) (D(y + n, sigma) - y)_j^2 + u(sigma) ],
    lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2.   Used to pretrain a teacher (r = 0 everywhere).
    """

    def __init__(self, cfg: ECTConfig):
        self.cfg = cfg

    def flop_passes(self) -> dict[str, float]:
        """Forward-pass equivalents per image: one forward with its backward."""
        return {"online": 3.0}

    def __call__(
        self, net: Net, x0: torch.Tensor, labels, nimg: int, generator=None, dropout_masks=None, t_generator=None
    ) -> LossOutput:
        cfg = self.cfg
        x0 = x0.to(torch.float32)
        if t_generator is not None:
            sigma = schedules.sample_t(x0.shape[0], cfg, t_generator, "cpu").to(x0.device, non_blocking=True)
        else:
            sigma = schedules.sample_t(x0.shape[0], cfg, generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device) * sigma.view(-1, 1, 1, 1)
        lam = ((sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2).view(-1, 1, 1, 1)
        if cfg.learned_uncertainty:
            D, u = net(x0 + noise, sigma, labels, dropout_masks=dropout_masks, return_logvar=True)
            per_elem = lam / u.exp() * (D - x0).square() + u
        else:
            D = net(x0 + noise, sigma, labels, dropout_masks=dropout_masks)
            per_elem = lam * (D - x0).square()
        loss = per_elem.flatten(1).sum(1)
        zeros = torch.zeros_like(sigma)
        return LossOutput(
            loss=loss,
            t=sigma,
            r=zeros,
            distance=_flat_sumsq(D - x0).sqrt().detach(),
            nonfinite_targets=torch.zeros((), dtype=torch.long, device=x0.device),
        )
