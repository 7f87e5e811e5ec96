"""Forced weight normalisation (EDM2 Eq. 66) as an explicit operation.

EDM2 renormalises every MPConv weight in place during each train-mode forward. Here it is a separate step
that the trainer calls once before training starts (a published EMA is an average of normalised weights,
so its rows are not unit-norm; EDM2 Sec. 2.3) and after every optimizer step. The engine applies the
same row-wise rule to ZeRO's sharded fp32 master weights (`row_scale`), so nothing is gathered.

Rule per output row i of a weight with fan-in F:  w_i <- w_i / (eps + ||w_i||_2 / sqrt(F)),  eps = 1e-4.
"""

from __future__ import annotations

import math

import torch

from ect_scale.networks.layers import MPConv, normalize

EPS = 1e-4


def mp_weights(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter, int]]:
    """All MPConv weights of `module` as (qualified name, parameter, fan_in), in module order."""
    out = []
    for name, m in module.named_modules():
        if isinstance(m, MPConv):
            out.append((f"{name}.weight" if name else "weight", m.weight, m.fan_in))
    return out


@torch.no_grad()
def forced_weight_norm_(module: torch.nn.Module) -> None:
    """Renormalise every MPConv weight of an unsharded module in place (Eq. 66)."""
    for _, w, _ in mp_weights(module):
        w.copy_(normalize(w.to(torch.float32)).to(w.dtype))


def row_scale(row_sumsq: torch.Tensor, fan_in: int, eps: float = EPS) -> torch.Tensor:
    """Multiplier 1 / (eps + ||w_i|| / sqrt(fan_in)) from per-row sums of squares (float32)."""
    return 1.0 / (eps + row_sumsq.to(torch.float32).sqrt() / math.sqrt(fan_in))


def max_row_norm_error(module: torch.nn.Module) -> float:
    """max_i | ||w_i|| / sqrt(fan_in) - 1 | over all MPConv rows: ~eps right after forced normalisation."""
    err = 0.0
    for _, w, fan in mp_weights(module):
        rms = w.detach().to(torch.float32).flatten(1).norm(dim=1) / math.sqrt(fan)
        err = max(err, float((rms - 1).abs().max()))
    return err
