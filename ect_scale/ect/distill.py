"""Distillation objectives beside ECT: consistency distillation (CD) and ECT with a teacher ODE step (ECD).

Both use a frozen teacher D_phi(x; sigma) through the probability-flow ODE of EDM (Karras et al. 2022, Eq. 4 with
sigma(t) = t, s(t) = 1; the form of Song et al. 2023, Eq. 3):
    dx/dt = (x - D_phi(x; t)) / t.
With a guide network (autoguidance or classifier-free guidance) the teacher's denoiser is
    D_w(x; t) = D_guide(x; t) + w (D_teacher(x; t) - D_guide(x; t))
(sony/cmt imagenet512/training/loss.py:447, `g_net(x, t, labels).lerp(net_ref(x, t, labels), self.guid)`).
One step from t to r (Song et al. 2023, Eq. 6; EDM Algorithm 1, lines 5-8):
    Euler  x_r = x_t + (r - t) d(x_t, t),                       d(x, t) = (x - D_w(x; t)) / t
    Heun   x' = x_t + (r - t) d(x_t, t);  x_r = x_t + (r - t) (d(x_t, t) + d(x', r)) / 2     (r > 0; Euler at r = 0)

CD (Song et al. 2023, "Consistency Models", Algorithm 2; openai/consistency_models cm/karras_diffusion.py,
consistency_losses): N levels t_1 = eps < ... < t_N = T (Sec. 4, Karras et al.'s rho = 7 schedule), n ~ U{1..N-1},
    x_{t_{n+1}} = x + t_{n+1} z,   x^_{t_n} = one teacher step from x_{t_{n+1}} to t_n          (Eq. 6)
    L = lambda(t_n) d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta-(x^_{t_n}, t_n))                   (Eq. 7)
    theta- <- stopgrad(mu theta- + (1 - mu) theta)  after every optimizer step                (Eq. 8)
The target network theta- is the run's `target-<mu>` EMA (`train.teacher.TargetNetwork`); both passes use the same
dropout masks (the official code restores the RNG state for this).

ECD (ECT with the teacher in the loop): ECT's t ~ p(t), r(t) schedule, weighting and target sg[f_theta(x_r, r)]
from the online network with the same dropout masks (`loss.ECTLoss`), but x_r is one teacher ODE step from x_t
instead of x0 + r eps (sony/cmt imagenet512/training/loss.py, ECDLoss/ECDGuidLoss). With a teacher that returns x0
the step is exact: x_t + (r - t) eps = x0 + r eps, ECT's x_r.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ect_scale.config.base import ConfigError
from ect_scale.config.distill import DistillConfig
from ect_scale.config.ect import ECTConfig
from ect_scale.ect.loss import Distance, ECTLoss, LossOutput, huber_distance, weighting

Denoiser = Callable[..., torch.Tensor]  # D(x, sigma, labels) -> float32 [N, C, H, W].


@dataclass
class DistillNets:
    """The frozen networks an objective calls: the teacher, an optional guide, and CD's target network theta-
    (called as target(x, sigma, labels, dropout_masks=...))."""

    teacher: Denoiser
    guide: Optional[Denoiser] = None
    target: Optional[Callable[..., torch.Tensor]] = None


def karras_levels(n: int, t_min: float, t_max: float, rho: float = 7.0) -> torch.Tensor:
    """t_i = (t_min^(1/rho) + (i-1)/(N-1) (t_max^(1/rho) - t_min^(1/rho)))^rho, i = 1..N, increasing
    (Song et al. 2023, Sec. 4; EDM Eq. 5 in reverse order). Computed in float64, returned as float32 [N]."""
    i = torch.arange(n, dtype=torch.float64)
    lo, hi = t_min ** (1 / rho), t_max ** (1 / rho)
    return ((lo + i / (n - 1) * (hi - lo)) ** rho).to(torch.float32)


def guided(teacher: Denoiser, guide: Optional[Denoiser], w: float) -> Denoiser:
    """D_w = D_guide + w (D_teacher - D_guide) (the teacher alone when there is no guide or w = 1)."""
    if guide is None or w == 1.0:
        return teacher
    return lambda x, sigma, labels: guide(x, sigma, labels).lerp(teacher(x, sigma, labels), w)


@torch.no_grad()
def ode_step(denoise: Denoiser, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, labels, solver: str = "heun"):
    """One step of dx/dt = (x - D(x; t)) / t from t to r (per sample, r <= t); see the module docstring."""
    t4, r4 = t.view(-1, 1, 1, 1), r.view(-1, 1, 1, 1)
    d = (x - denoise(x, t, labels)) / t4
    x_euler = x + (r4 - t4) * d
    positive = r > 0
    if solver == "euler" or not bool(positive.any()):
        return x_euler
    r_safe = torch.where(positive, r, t)  # The network is never asked for sigma = 0 (Euler is used there).
    d_next = (x_euler - denoise(x_euler, r_safe, labels)) / r_safe.view(-1, 1, 1, 1)
    x_heun = x + (r4 - t4) * 0.5 * (d + d_next)
    return torch.where(positive.view(-1, 1, 1, 1), x_heun, x_euler)


def build_distance(dcfg: DistillConfig, c: float) -> Distance:
    """The distance `distill.distance` names: pseudo-Huber with ECT's c, or CD's squared L2 norm."""
    if dcfg.distance == "pseudo_huber":
        return huber_distance(c)
    if dcfg.distance == "l2_squared":
        return lambda a, b: (a - b).square().flatten(1).sum(1)
    raise ConfigError(f"distill.distance: no built-in distance {dcfg.distance!r}. Fix: use pseudo_huber or l2_squared")


def teacher_passes(dcfg: DistillConfig, nets: DistillNets) -> dict[str, float]:
    """Forward passes per image of the teacher (and guide) in one ODE step: 2 for Heun, 1 for Euler (nominal)."""
    k = 2.0 if dcfg.solver == "heun" else 1.0
    passes = {"teacher": k}
    if nets.guide is not None and dcfg.guidance != 1.0:
        passes["guide"] = k
    return passes


class CDLoss:
    """Consistency distillation (see the module docstring). Per-sample losses; the caller averages them."""

    def __init__(self, cfg: ECTConfig, dcfg: DistillConfig, nets: DistillNets, distance: Optional[Distance] = None):
        if nets.target is None:
            raise ValueError("CDLoss needs the target network theta- (DistillNets.target)")
        self.cfg, self.dcfg, self.nets = cfg, dcfg, nets
        self.levels = karras_levels(dcfg.levels, dcfg.t_min, cfg.t_max, dcfg.rho)
        self.denoise = guided(nets.teacher, nets.guide, dcfg.guidance)
        self.distance = distance or build_distance(dcfg, cfg.c)

    def flop_passes(self) -> dict[str, float]:
        """Online forward + backward (3), theta-'s forward (1) and the teacher step, by network."""
        return {"online": 3.0, "target": 1.0, **teacher_passes(self.dcfg, self.nets)}

    def sample_levels(self, n: int, generator: Optional[torch.Generator], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_{n+1}, t_n) for n ~ U{1, ..., N-1} per sample."""
        idx = torch.randint(0, self.dcfg.levels - 1, (n,), generator=generator, device=device)
        levels = self.levels.to(device)
        return levels[idx + 1], levels[idx]

    def __call__(
        self,
        net,
        x0: torch.Tensor,
        labels: Optional[torch.Tensor],
        nimg: int,
        generator: Optional[torch.Generator] = None,
        dropout_masks: Optional[dict[str, torch.Tensor]] = None,
        t_generator: Optional[torch.Generator] = None,
    ) -> LossOutput:
        """`t_generator` (CPU) draws the level indices on the host, like ECT's t; `nimg` is unused (CD's N and mu
        are fixed)."""
        x0 = x0.to(torch.float32)
        if t_generator is not None:
            t_hi, t_lo = self.sample_levels(x0.shape[0], t_generator, "cpu")
            t_hi, t_lo = t_hi.to(x0.device, non_blocking=True), t_lo.to(x0.device, non_blocking=True)
        else:
            t_hi, t_lo = self.sample_levels(x0.shape[0], generator, x0.device)
        z = torch.randn(x0.shape, generator=generator, device=x0.device)
        x_hi = x0 + t_hi.view(-1, 1, 1, 1) * z  # x_{t_{n+1}} ~ N(x, t_{n+1}^2 I)
        x_lo = ode_step(self.denoise, x_hi, t_hi, t_lo, labels, self.dcfg.solver)  # x^_{t_n}, Eq. 6
        f_online = net(x_hi, t_hi, labels, dropout_masks=dropout_masks)  # f_theta(x_{t_{n+1}}, t_{n+1})
        with torch.no_grad():
            f_target = self.nets.target(x_lo, t_lo, labels, dropout_masks=dropout_masks).to(torch.float32)
        finite = torch.isfinite(f_target).flatten(1).all(1)
        f_target = torch.where(finite.view(-1, 1, 1, 1), torch.nan_to_num(f_target), x0)  # Dropped below.
        d = self.distance(f_online, f_target)
        loss = weighting(t_hi, t_lo, self.cfg) * d  # lambda(t_n) d(...), Eq. 7 (weighting 'none': lambda = 1).
        loss = torch.where(finite, loss, torch.zeros_like(loss))
        return LossOutput(loss=loss, t=t_hi, r=t_lo, distance=d.detach(), nonfinite_targets=(~finite).sum())


class ECDLoss(ECTLoss):
    """ECT with x_r from one teacher ODE step from x_t (see the module docstring); everything else is ECT's."""

    def __init__(
        self,
        cfg: ECTConfig,
        dcfg: DistillConfig,
        nets: DistillNets,
        reduce_any: Optional[Callable[[bool], bool]] = None,
        distance: Optional[Distance] = None,
    ):
        super().__init__(cfg, reduce_any, distance or build_distance(dcfg, cfg.c))
        self.dcfg, self.nets = dcfg, nets
        self.denoise = guided(nets.teacher, nets.guide, dcfg.guidance)

    def flop_passes(self) -> dict[str, float]:
        """ECT's 4 (online forward + backward, target forward) plus the teacher step, by network."""
        return {"online": 4.0, **teacher_passes(self.dcfg, self.nets)}

    def target_point(self, x0, x_t, eps, t, r, labels, any_positive: Optional[bool] = None) -> torch.Tensor:
        """x_r = one teacher step from x_t to r; no teacher call when every r is 0 (the target is x0 there)."""
        local_any = any_positive if any_positive is not None else bool((r > 0).any())
        if not local_any:
            return super().target_point(x0, x_t, eps, t, r, labels)
        return ode_step(self.denoise, x_t, t, r, labels, self.dcfg.solver)
