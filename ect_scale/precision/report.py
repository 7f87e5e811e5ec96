"""The precision report behind `tools/precision_report.py`: for each ECT stage of a recipe and a grid of t, the
signal ||f(x_t) - f(x_r)|| at that stage's r and its rounding error in each precision mode, against fp32 with
TF32 off, in units of the pseudo-Huber c; optionally the gradient's rounding error against minibatch noise.

A mode name may carry '@bf16' ('fp16@bf16'): the network's weights are first rounded to bfloat16, as with the bf16
parameter copy that `engine.param_dtype: auto` keeps, and the reference still uses the exact fp32 weights.
With `compiled=True` the modes run through `torch.compile` (inductor, no CUDA graphs: the same kernels as compiled
training's forward, one compile per mode); the fp32 reference stays eager.
"""

from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import torch

from ect_scale.config import ECTConfig
from ect_scale.ect import ECTLoss
from ect_scale.ect.schedules import t_to_r
from ect_scale.precision.rounding import gradient_noise, measure


def stage_count(cfg_ect: ECTConfig, total_nimg: Optional[int]) -> int:
    return max(1, math.ceil(total_nimg / cfg_ect.stage_nimg)) if total_nimg else 4


def bf16_weights(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of `net` whose parameters hold bf16-rounded values (in fp32 storage)."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        for p in out.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    return out


def report(
    net,
    x0: torch.Tensor,
    labels,
    ect: ECTConfig,
    stages: Sequence[int],
    t_grid: Sequence[float],
    modes: Sequence[str],
    grads: bool = False,
    grad_batches: Optional[list] = None,
    compiled: bool = False,
    backend: str = "inductor",
) -> dict:
    """Rows {stage, dt_over_t, t, r, signal, c, errors{mode}, ratios{mode}} and per-stage gradient noise (the
    gradients are measured eagerly). `backend`: torch.compile's, when `compiled`."""
    nets = {m: bf16_weights(net) for m in modes if m.endswith("@bf16")}
    if compiled:
        nets = {m: torch.compile(nets.get(m, net), dynamic=False, backend=backend) for m in modes}
    masks = net.sample_dropout_masks(x0.shape[0], torch.Generator(device=x0.device).manual_seed(1), device=x0.device)
    rows, grad_rows = [], []
    for stage in stages:
        nimg = stage * ect.stage_nimg
        for t in t_grid:
            r = float(t_to_r(torch.tensor([float(t)]), nimg, ect))
            if r <= 0:
                continue  # The target is x0 itself: nothing to round.
            stats = measure(net, x0, labels, t, r, modes, masks=masks, nets=nets)
            rows.append(
                {
                    "stage": stage,
                    "dt_over_t": 1 - r / t,
                    "t": float(t),
                    "r": r,
                    "signal": stats[0].signal,
                    "c": ect.c,
                    "errors": {s.mode: s.error for s in stats},
                    "ratios": {s.mode: s.ratio for s in stats},
                }
            )
        if grads:
            plain = [m for m in modes if "@" not in m]
            noise = gradient_noise(net, ECTLoss(ect), grad_batches or [(x0, labels)], nimg, plain)
            grad_rows.append({"stage": stage, **noise})
    return {"rows": rows, "gradients": grad_rows, "modes": list(modes), "compiled": compiled}


def last_stage_summary(result: dict, reference_mode: str = "tf32") -> dict[str, float]:
    """mode -> median over t of error(mode) / error(reference_mode) at the last stage (the issue's noise target)."""
    last = max(r["stage"] for r in result["rows"])
    rows = [r for r in result["rows"] if r["stage"] == last]
    out = {}
    if rows and reference_mode in rows[0]["errors"]:
        for mode in rows[0]["errors"]:
            vals = sorted(r["errors"][mode] / max(r["errors"][reference_mode], 1e-30) for r in rows)
            out[mode] = vals[len(vals) // 2]
    return out


def format_table(result: dict) -> str:
    """A fixed-width table: one row per (stage, t), error and error/signal per mode."""
    modes = result["modes"]
    head = f"{'stage':>5} {'dt/t':>9} {'t':>7} {'signal':>9} {'c':>7}" + "".join(
        f" {m + ' err (x sig)':>22}" for m in modes
    )
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        cells = "".join(f" {r['errors'][m]:>11.4g} ({r['ratios'][m]:>7.3f})" for m in modes)
        lines.append(f"{r['stage']:>5} {r['dt_over_t']:>9.5f} {r['t']:>7g} {r['signal']:>9.4g} {r['c']:>7g}{cells}")
    for g in result["gradients"]:
        parts = ", ".join(f"{k} {v:.3g}" for k, v in g.items() if k != "stage")
        lines.append(f"gradient rounding error / ||g|| at stage {g['stage']}: {parts}")
    return "\n".join(lines)
