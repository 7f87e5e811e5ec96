"""A 2-D toy that runs ECT end to end on a CPU in about a minute, with the project's own objective code.

1. Pretrain a teacher denoiser on a Gaussian mixture with EDM2's diffusion loss (`DiffusionLoss`).
2. ECT-tune a copy with `ECTLoss` (same schedules, same shared-noise target, same weighting code).
3. Compare samples to the true distribution by the sliced Wasserstein distance (SWD):
   teacher Heun with 32 steps (63 NFE), teacher Heun with 2 steps (3 NFE), ECT with 1 and 2 steps.
The data are shaped [N, 2, 1, 1] so the image-shaped objective and samplers apply unchanged.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch

from ect_scale.config import ECTConfig
from ect_scale.ect import DiffusionLoss, ECTLoss, SeedGenerators, consistency_sample, heun_sample
from ect_scale.networks.precond import edm_coefficients

SIGMA_DATA = 0.5


def sample_mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    """Eight Gaussians on a ring (radius 0.7, std 0.04): per-coordinate std ~= 0.5. Shape [n, 2, 1, 1]."""
    k = torch.randint(8, (n,), generator=generator)
    angle = k.float() * (2 * math.pi / 8)
    centers = 0.7 * torch.stack([angle.cos(), angle.sin()], dim=1)
    x = centers + 0.04 * torch.randn(n, 2, generator=generator)
    return x.view(n, 2, 1, 1)


class ToyDenoiser(torch.nn.Module):
    """MLP F inside EDM preconditioning: D(x, sigma) = c_skip x + c_out F(c_in x, c_noise). Positional time
    embedding (ECT issue #15 recommends it over Fourier features for stability)."""

    img_channels, img_resolution, label_dim = 2, 1, 0

    def __init__(self, hidden: int = 128, emb: int = 32):
        super().__init__()
        self.emb = emb
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(2 + emb, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, 2),
        )

    def _embed(self, c_noise: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(self.emb // 2, device=c_noise.device) / (self.emb // 2))
        ang = (c_noise * 100).view(-1, 1) * freqs
        return torch.cat([ang.sin(), ang.cos()], dim=1)

    def forward(self, x, sigma, class_labels=None, *, dropout_masks=None, return_logvar=False):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, SIGMA_DATA)
        h = torch.cat([(c_in * x).flatten(1), self._embed(c_noise.flatten())], dim=1)
        return c_skip * x + c_out * self.mlp(h).view_as(x)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """SWD_2 between two equal-size 2-D point sets: sqrt(mean over random directions of W_2^2 of the projections)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(num_projections, a.shape[1], generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa, _ = (a @ dirs.T).sort(dim=0)
    pb, _ = (b @ dirs.T).sort(dim=0)
    return float(((pa - pb) ** 2).mean().sqrt())


@dataclass
class ToyResult:
    swd_teacher_heun32: float
    swd_teacher_heun2: float
    swd_teacher_euler2: float  # Teacher with 2 Euler steps (2 NFE), a gentler few-step baseline than Heun.
    swd_ect_1step: float
    swd_ect_2step: float
    swd_data_vs_data: float  # Noise floor: two independent draws of the true distribution.
    seconds: float


def _train(net, loss_fn, steps: int, batch: int, lr: float, seed: int, nimg0: int = 0):
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99))
    data_gen = torch.Generator().manual_seed(seed)
    nimg = nimg0
    for step in range(steps):
        x0 = sample_mixture(batch, data_gen)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        loss = loss_fn(net, x0, None, nimg, generator=gen).loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:  # Cosine-free simple decay, as the toy needs no inverse-sqrt schedule.
            g["lr"] = lr * min(1.0, 2.0 * (1 - step / steps) + 0.05)
        opt.step()
        nimg += batch
    return net


def run_toy(
    teacher_steps: int = 3000,
    ect_steps: int = 2000,
    batch: int = 1024,
    num_eval: int = 8192,
    seed: int = 0,
    hidden: int = 128,
) -> ToyResult:
    """Pretrain, tune and evaluate (an MLP of width `hidden`). Defaults take under a minute of CPU time."""
    t0 = time.time()
    torch.manual_seed(seed)
    teacher_cfg = ECTConfig(objective="diffusion", P_mean=-1.2, P_std=1.2, sigma_data=SIGMA_DATA)
    teacher = _train(ToyDenoiser(hidden), DiffusionLoss(teacher_cfg), teacher_steps, batch, 2e-3, seed)

    # ECT: 4 stages of q=4 ending at Delta t / t = n(t)/256, pseudo-Huber metric, CIFAR's 1/(t-r) weighting.
    stage_nimg = ect_steps * batch // 4
    ect_cfg = ECTConfig(
        objective="ect",
        P_mean=-1.1,
        P_std=2.0,
        q=4,
        stage_nimg=stage_nimg,
        c=1e-3,
        weighting="inv_dt",
        sigma_data=SIGMA_DATA,
        ratio_limit=0.9961,
    )
    student = _train(copy.deepcopy(teacher), ECTLoss(ect_cfg), ect_steps, batch, 5e-4, seed + 1)

    eval_gen = torch.Generator().manual_seed(10_000 + seed)
    truth = sample_mixture(num_eval, eval_gen)
    truth2 = sample_mixture(num_eval, eval_gen)
    seeds = list(range(num_eval))
    teacher.eval(), student.eval()
    rng = SeedGenerators(seeds, "cpu")
    z = rng.randn([2, 1, 1])
    res = ToyResult(
        swd_teacher_heun32=sliced_wasserstein(heun_sample(teacher, z, None, num_steps=32), truth),
        swd_teacher_heun2=sliced_wasserstein(heun_sample(teacher, z, None, num_steps=2), truth),
        swd_teacher_euler2=sliced_wasserstein(heun_sample(teacher, z, None, num_steps=2, order=1), truth),
        swd_ect_1step=sliced_wasserstein(consistency_sample(student, z, None, SeedGenerators(seeds, "cpu")), truth),
        swd_ect_2step=sliced_wasserstein(
            consistency_sample(student, z, None, SeedGenerators(seeds, "cpu"), t_mid=[0.821]), truth
        ),
        swd_data_vs_data=sliced_wasserstein(truth2, truth),
        seconds=0.0,
    )
    res.seconds = round(time.time() - t0, 1)
    return res
