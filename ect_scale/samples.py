"""Sample grids for monitoring: a few fixed seeds through the 1-step and multi-step samplers (or EDM's Heun
sampler when pretraining a teacher), decoded to uint8, tiled, saved as PNG and sent to TensorBoard."""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from ect_scale.ect import generate


def tile(images_uint8: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] uint8 -> one [3, rows*H, cols*W] grid."""
    n, c, h, w = images_uint8.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = torch.zeros(c, rows * h, cols * w, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = images_uint8[i].cpu()
    return grid


@torch.no_grad()
def sample_grids(net, encoder, ect_cfg, num: int = 64, device="cpu") -> dict[str, torch.Tensor]:
    """{'1step': grid, '<n>step': grid} for consistency models, {'heun32': grid} for diffusion teachers."""
    net = net.to(device).eval()
    seeds = list(range(num))
    if ect_cfg.objective == "diffusion":
        runs = {"heun32": dict(sampler="heun", num_steps=32, t_max=ect_cfg.t_max)}
    else:
        runs = {"1step": dict(t_max=ect_cfg.t_max)}
        if ect_cfg.t_mid:
            runs[f"{len(ect_cfg.t_mid) + 1}step"] = dict(t_max=ect_cfg.t_max, t_mid=ect_cfg.t_mid)
    return {name: tile(encoder.decode(generate(net, seeds, device, **kw))) for name, kw in runs.items()}


def save_png(grid: torch.Tensor, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def can_decode(encoder) -> Optional[str]:
    """None if `encoder.decode` can run here, else the reason (e.g. the SD-VAE is not available offline)."""
    if getattr(encoder, "kind", None) != "sd-vae":
        return None
    try:
        encoder.vae()
        return None
    except Exception as e:  # noqa: BLE001 - any loading failure just disables grids
        return str(e).split(". Fix")[0]
