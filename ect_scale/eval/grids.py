"""Sample grids for monitoring: a few fixed seeds through the 1-step and multi-step samplers (or EDM's Heun
sampler when pretraining a teacher), decoded to uint8, tiled, saved as PNG and sent to TensorBoard."""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from ect_scale.ect import generate

PAD_VALUE = 128  # Mid-grey gutters: visible against dark and bright images alike.


def auto_zoom(resolution: int, min_cell: int = 32) -> int:
    """Nearest-neighbour magnification that makes each grid cell at least `min_cell` pixels (tiny datasets)."""
    return max(1, -(-min_cell // resolution))


def make_grid(
    images: torch.Tensor, cols: Optional[int] = None, pad: int = 0, zoom: int = 1, pad_value: int = PAD_VALUE
) -> torch.Tensor:
    """uint8 [N,C,H,W] -> uint8 [C, rows*(zH+pad)+pad, cols*(zW+pad)+pad]: row-major cells magnified `zoom` times
    (nearest neighbour) with `pad`-pixel gutters between and around them (none when pad=0); unused cells black."""
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    if zoom > 1:
        images = images.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)
        h, w = h * zoom, w * zoom
    cells = torch.zeros([rows * cols, c, h, w], dtype=images.dtype, device=images.device)
    cells[:n] = images
    cells = cells.view(rows, cols, c, h, w)
    if pad:
        cells = torch.nn.functional.pad(cells, (0, pad, 0, pad), value=pad_value)  # Right and bottom gutters.
        h, w = h + pad, w + pad
    grid = cells.permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)
    return torch.nn.functional.pad(grid, (pad, 0, pad, 0), value=pad_value) if pad else grid


def tile(images_uint8: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] uint8 -> one padded grid (CPU), tiny images magnified to >= 32 px cells."""
    return make_grid(images_uint8.cpu(), pad=2, zoom=auto_zoom(images_uint8.shape[-1]))


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
