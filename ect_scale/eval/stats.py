"""Feature statistics accumulated across ranks, and the Fréchet distance between two Gaussians.

Each rank keeps float64 running sums of its features f, of the outer products f fᵀ and the count n on the
device that produced the features (no per-batch communication). `reduce_stats` sums every accumulator of every
rank with ONE all-reduce of a packed buffer; then, on every rank,
    mu    = Σf / n
    Sigma = (Σ f fᵀ - n mu muᵀ) / (n - 1)                      (unbiased covariance; EDM2 calculate_metrics)
The sums are float64 and TF32 is switched off on this path (k-diffusion's FID does the same;
meta-pytorch/torcheval#192): an fp32/TF32 fᵀf is badly wrong.

    FD² = ||mu1 - mu2||² + tr(S1) + tr(S2) - 2 tr((S1^½ S2 S1^½)^½)
(Fréchet distance between N(mu1, S1) and N(mu2, S2), Dowson & Landau 1982; FID = FD of Inception-v3 pool
features, Heusel et al. 2017; FD_DINOv2 = FD of DINOv2 ViT-L/14 features, Stein et al. 2023.)
tr((S1 S2)^½) equals tr((S1^½ S2 S1^½)^½) because S1 S2 is similar to the symmetric PSD S1^½ S2 S1^½; its
eigenvalues come from `eigh` in float64 with tiny negatives clamped to 0 (no scipy `sqrtm`, whose `disp`
argument was removed in SciPy 1.18).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from ect_scale.runtime.dist import all_reduce_sum_

ArrayLike = Union[np.ndarray, torch.Tensor]


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full-precision fp32 matmuls and convolutions inside the block; the previous settings are restored after.

    Uses the per-backend `fp32_precision` knobs when torch has them (mixing them with the legacy `allow_tf32`
    flags is an error in recent torch), else the legacy flags.
    """
    knobs = [
        getattr(torch.backends.cuda, "matmul", None),
        getattr(torch.backends.cudnn, "conv", None),
        getattr(torch.backends.cudnn, "rnn", None),
    ]
    if all(k is not None and hasattr(k, "fp32_precision") for k in knobs):
        saved = [k.fp32_precision for k in knobs]
        for k in knobs:
            k.fp32_precision = "ieee"
        try:
            yield
        finally:
            for k, s in zip(knobs, saved):
                k.fp32_precision = s
        return
    saved_legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_legacy


@dataclass
class GaussianStats:
    """Mean and covariance of a feature distribution (float64), and how many samples produced them."""

    mu: np.ndarray
    sigma: np.ndarray
    num: int
    _sigma_sqrt: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @property
    def feature_dim(self) -> int:
        return int(self.mu.shape[0])

    def sigma_sqrt(self) -> np.ndarray:
        """Sigma^½, computed once (reference statistics are compared against many times)."""
        if self._sigma_sqrt is None:
            self._sigma_sqrt = sqrtm_psd(np.asarray(self.sigma, dtype=np.float64))
        return self._sigma_sqrt


class FeatureStats:
    """Per-rank float64 sums Σf, Σffᵀ and n on the features' device; `reduce_stats` combines the ranks."""

    def __init__(self, feature_dim: int, device: Union[str, torch.device] = "cpu"):
        self.feature_dim = int(feature_dim)
        self.device = torch.device(device)
        self.sum = torch.zeros([self.feature_dim], dtype=torch.float64, device=self.device)
        self.outer = torch.zeros([self.feature_dim, self.feature_dim], dtype=torch.float64, device=self.device)
        self.count = torch.zeros([], dtype=torch.float64, device=self.device)
        self.reduced = False

    @property
    def num(self) -> int:
        return int(self.count.item())

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features [N, D] (any float dtype; accumulated in float64)."""
        if self.reduced:
            raise RuntimeError(
                "FeatureStats.update after reduce_stats: the sums already include every rank; "
                "create a new FeatureStats for another evaluation"
            )
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"expected features of shape [N, {self.feature_dim}], got {list(features.shape)}")
        with no_tf32():
            f = features.to(device=self.device, dtype=torch.float64)
            self.sum += f.sum(0)
            self.outer += f.T @ f
            self.count += f.shape[0]

    def gaussian(self) -> GaussianStats:
        """mu and Sigma from the (reduced) sums."""
        n = self.num
        if n < 2:
            raise ValueError(f"need at least 2 samples to estimate a covariance, got {n}")
        s = self.sum.cpu().numpy()
        mu = s / n
        sigma = (self.outer.cpu().numpy() - n * np.outer(mu, mu)) / (n - 1)
        return GaussianStats(mu=mu, sigma=sigma, num=n)

    def state_dict(self) -> dict:
        return {"sum": self.sum.cpu(), "outer": self.outer.cpu(), "count": self.count.cpu(), "reduced": self.reduced}

    def load_state_dict(self, state: dict) -> None:
        self.sum.copy_(state["sum"])
        self.outer.copy_(state["outer"])
        self.count.copy_(state["count"])
        self.reduced = bool(state["reduced"])


def reduce_stats(stats: Sequence[FeatureStats]) -> None:
    """Sum every accumulator over all ranks with a single all-reduce (collective: call on every rank)."""
    if not stats:
        return
    if any(s.reduced for s in stats):
        raise RuntimeError("reduce_stats: an accumulator was already reduced (its sums would be counted twice)")
    device = stats[0].device
    parts = [t.reshape(-1).to(device) for s in stats for t in (s.count.reshape(1), s.sum, s.outer)]
    packed = torch.cat(parts)
    all_reduce_sum_(packed)
    offset = 0
    for s in stats:
        for t in (s.count, s.sum, s.outer):
            t.copy_(packed[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        s.reduced = True


def _as_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root through `eigh`, negative rounding-noise eigenvalues clamped to 0."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, sigma1_sqrt: Optional[np.ndarray] = None) -> float:
    """tr((S1 S2)^½) = Σ sqrt(λ_i(S1^½ S2 S1^½)), all in float64."""
    s1h = sqrtm_psd(sigma1) if sigma1_sqrt is None else sigma1_sqrt
    a = s1h @ sigma2 @ s1h
    lam = np.linalg.eigvalsh((a + a.T) / 2)
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, sigma1_sqrt: Optional[np.ndarray] = None
) -> float:
    """FD² between N(mu1, S1) and N(mu2, S2) (module docstring), clamped at 0 against rounding noise.

    `sigma1_sqrt` may pass a precomputed S1^½ (e.g. of the reference statistics)."""
    mu1, mu2, sigma1, sigma2 = (_as_float64(x) for x in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
            f"{sigma2.shape} (were they computed with the same detector?)"
        )
    if not all(np.isfinite(x).all() for x in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("statistics contain NaN or Inf (non-finite detector features, e.g. from NaN samples)")
    m = float(np.square(mu1 - mu2).sum())
    fd = m + float(np.trace(sigma1) + np.trace(sigma2)) - 2 * trace_sqrt_product(sigma1, sigma2, sigma1_sqrt)
    return max(fd, 0.0)


def fd_between(gen: GaussianStats, ref: GaussianStats) -> float:
    """Fréchet distance between generated and reference statistics (the reference's Sigma^½ is cached)."""
    return frechet_distance(ref.mu, ref.sigma, gen.mu, gen.sigma, sigma1_sqrt=ref.sigma_sqrt())
