"""Magnitude-preserving (MP) primitives of EDM2 (Karras et al. 2024, arXiv:2312.02696, App. B).

Pure math: nothing here knows about distribution or training loops. Parameter and buffer names
(`weight`, `freqs`, `phases`) match the official EDM2 network so checkpoints map one-to-one.
Forced weight normalisation (Eq. 66) is *not* done inside `forward`; see `networks.weight_norm`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------


def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """Scale each slice over `dim` (default: all but dim 0) to unit RMS: x / (eps + ||x|| / sqrt(fan)).

    The norm is computed in float32 (Eq. 47's normalisation; App. B.2).
    """
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    fan = x.numel() // max(norm.numel(), 1)
    norm = eps + norm * (1.0 / math.sqrt(fan))
    return x / norm.to(x.dtype)


def resample(x: torch.Tensor, mode: str = "keep") -> torch.Tensor:
    """2x box-filter down/upsampling, depthwise (EDM2 `resample` with filter [1,1])."""
    if mode == "keep":
        return x
    c = x.shape[1]
    if mode == "down":
        # Normalised 2x2 box: average of each 2x2 patch.
        w = x.new_full((c, 1, 2, 2), 0.25)
        return F.conv2d(x, w, groups=c, stride=2)
    if mode == "up":
        # Transposed conv with 4 x the normalised box = nearest-neighbour 2x upsampling.
        w = x.new_ones((c, 1, 2, 2))
        return F.conv_transpose2d(x, w, groups=c, stride=2)
    raise ValueError(f"resample: unknown mode {mode!r} (expected 'keep', 'down' or 'up')")


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """Magnitude-preserving SiLU (Eq. 81): silu(x) / 0.596, where 0.596 = sqrt(E[silu(N(0,1))^2])."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving weighted sum (Eq. 88): ((1-t) a + t b) / sqrt((1-t)^2 + t^2)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving concatenation (Eq. 103)."""
    na, nb = a.shape[dim], b.shape[dim]
    scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    wa = scale / math.sqrt(na) * (1 - t)
    wb = scale / math.sqrt(nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)


# ----------------------------------------------------------------------------


class MPFourier(torch.nn.Module):
    """Magnitude-preserving Fourier features (Eq. 75): sqrt(2) cos(2pi (f x + phi)), f ~ N(0, bw^2), phi ~ U(0,1).

    Frequencies and phases are random per model and stored as buffers; load them from the checkpoint.
    """

    def __init__(self, num_channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x_N: torch.Tensor) -> torch.Tensor:
        y = torch.outer(x_N.to(torch.float32), self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x_N.dtype)


class MPConv(torch.nn.Module):
    """Magnitude-preserving convolution or linear layer without bias (Eq. 47).

    y = gain * <w_i / ||w_i||, x> / sqrt(fan_in) computed as normalize(w) * gain / sqrt(fan_in).
    The standard weight normalisation inside `forward` projects gradients onto the tangent plane; the
    *forced* normalisation of the stored weight (Eq. 66) is an explicit step, `forced_weight_norm_`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...] | list[int]):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.fan_in = in_channels * math.prod(kernel)  # From the constructor: ZeRO-3 empties partitioned weights.
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def effective_weight(self, dtype: torch.dtype, gain=1.0) -> torch.Tensor:
        w = normalize(self.weight.to(torch.float32))  # Eq. 47 weight normalisation (fp32).
        w = w * (gain / math.sqrt(self.fan_in))  # Unit-magnitude output scaling.
        return w.to(dtype)

    def forward(self, x: torch.Tensor, gain=1.0) -> torch.Tensor:
        w = self.effective_weight(x.dtype, gain)
        if w.ndim == 2:
            return x @ w.t()
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            w = w.contiguous(memory_format=torch.channels_last)  # NHWC activations: NHWC weights for cuDNN.
        return F.conv2d(x, w, padding=w.shape[-1] // 2)
