"""Samplers: the consistency sampler (1-, 2- or n-step) and EDM's deterministic Heun sampler for teachers.

All arithmetic between network calls is float64, as in ECT's and EDM2's samplers. Noise and labels come from
per-seed generators (`SeedGenerators`), so each sample depends only on its seed. Put networks in eval mode
before sampling (no dropout; locuslab/ect#21).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from ect_scale.ect.rng import SeedGenerators


def draw_labels(rng: SeedGenerators, label_dim: int) -> Optional[torch.Tensor]:
    """One-hot class labels drawn uniformly per seed (EDM2's protocol); None for unconditional nets."""
    if label_dim == 0:
        return None
    idx = rng.randint(label_dim)
    return torch.nn.functional.one_hot(idx, label_dim).to(torch.float32)


def draw_latents(rng: SeedGenerators, net) -> torch.Tensor:
    """z ~ N(0, I) of the network's input shape, one per seed."""
    return rng.randn([net.img_channels, net.img_resolution, net.img_resolution])


@torch.no_grad()
def consistency_sample(
    net,
    z: torch.Tensor,
    labels: Optional[torch.Tensor],
    rng: SeedGenerators,
    t_max: float = 80.0,
    t_mid: Sequence[float] = (),
) -> torch.Tensor:
    """Multistep consistency sampling (ECT Sec. 2; Song et al. 2023, Algorithm 1): x = f(t_max z, t_max); for each
    t in t_mid: x = f(x + t eps, t) with fresh per-seed eps (VE re-noising). Returns float32 samples.

    1 step: t_mid=(); 2 steps: t_mid=(t_mid,) with ECT's 1.526 on ImageNet-64.
    """
    return consistency_samples(net, z, labels, rng, {"x": (t_max, t_mid)})["x"]


@torch.no_grad()
def consistency_samples(
    net,
    z: torch.Tensor,
    labels: Optional[torch.Tensor],
    rng: SeedGenerators,
    schedules: Mapping[str, tuple[float, Sequence[float]]],
) -> dict[str, torch.Tensor]:
    """`consistency_sample` for several schedules {name: (t_max, t_mid)} of the same seeds at once. Schedules that
    share a prefix of times share its network calls (x = f(t_max z, t_max) is computed once for the 1-step and every
    2-step sampler), and the k-th re-noising eps is the k-th draw of each seed's generator in all of them, so every
    output equals a `consistency_sample` call of its own."""
    depth = max((len(t_mid) for _, t_mid in schedules.values()), default=0)
    eps = [rng.randn(z.shape[1:], dtype=torch.float64) for _ in range(depth)]  # eps_k: k-th draw of each seed.
    cache: dict[tuple, torch.Tensor] = {}

    def f(x: torch.Tensor, t: float) -> torch.Tensor:
        sigma = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        return net(x, sigma, labels).to(torch.float64)

    def run(t_max: float, prefix: tuple[float, ...]) -> torch.Tensor:
        key = (t_max, prefix)
        if key not in cache:
            if not prefix:
                cache[key] = f(z.to(torch.float64) * t_max, t_max)
            else:
                t = prefix[-1]
                cache[key] = f(run(t_max, prefix[:-1]) + t * eps[len(prefix) - 1], t)
        return cache[key]

    return {
        name: run(float(t_max), tuple(float(t) for t in t_mid)).to(torch.float32)
        for name, (t_max, t_mid) in schedules.items()
    }


def heun_time_steps(num_steps: int, sigma_min: float, sigma_max: float, rho: float, device) -> torch.Tensor:
    """EDM time discretisation (Karras et al. 2022, Eq. 5): t_i = (s_max^(1/rho) + i/(N-1)(s_min^(1/rho) -
    s_max^(1/rho)))^rho, t_N = 0."""
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])])


@torch.no_grad()
def heun_sample(
    net,
    z: torch.Tensor,
    labels: Optional[torch.Tensor],
    num_steps: int = 32,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    order: int = 2,
) -> torch.Tensor:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1, S_churn = 0): 2nd order (Heun, NFE = 2N - 1)
    or, with order=1, plain Euler (NFE = N)."""
    t_steps = heun_time_steps(num_steps, sigma_min, sigma_max, rho, z.device)
    x = z.to(torch.float64) * t_steps[0]

    def denoise(x, t):
        sigma = torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)
        return net(x, sigma, labels).to(torch.float64)

    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        d_cur = (x - denoise(x, t_cur)) / t_cur  # Euler step.
        x_next = x + (t_next - t_cur) * d_cur
        if order == 2 and i < num_steps - 1:  # 2nd-order correction, except on the last step.
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
    return x.to(torch.float32)


@torch.no_grad()
def generate(
    net,
    seeds: Sequence[int],
    device,
    sampler: str = "consistency",
    t_max: float = 80.0,
    t_mid: Sequence[float] = (),
    num_steps: int = 32,
    labels: Optional[torch.Tensor] = None,
    order: int = 2,
) -> torch.Tensor:
    """Samples for `seeds` (one per seed), drawing noise and (unless given) labels from the seed generators.
    sampler: 'consistency' (t_max, t_mid) or EDM's 'heun' (num_steps; order=1 gives Euler)."""
    rng = SeedGenerators(seeds, device)
    z = draw_latents(rng, net)
    if labels is None:
        labels = draw_labels(rng, net.label_dim)
    if sampler == "consistency":
        return consistency_sample(net, z, labels, rng, t_max=t_max, t_mid=t_mid)
    if sampler == "heun":
        return heun_sample(net, z, labels, num_steps=num_steps, sigma_max=t_max, order=order)
    raise ValueError(f"generate: unknown sampler {sampler!r} (expected 'consistency' or 'heun')")
