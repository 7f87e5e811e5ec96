"""How much of ECT's training signal survives a precision mode: the signal f(x_t) - f(x_r) against its rounding
error, in the forward pass and in the gradient. Used by `tools/precision_report.py` and by the trainer's check at
precision switches and stage starts.

ECT's target difference (ECT Eq. 19 with one shared noise draw; locuslab/ect training/loss.py):
    Delta = f(x_t, t) - f(x_r, r),   x_t = x0 + t eps,   x_r = x0 + r eps,   r = t (1 - n(t) / q^(s+1))
signal_i = ||Delta_i||_2 computed in fp32 (TF32 off); error_i = ||Delta_i(mode) - Delta_i(fp32)||_2. Both are in
the units of the pseudo-Huber constant c: once error >> c, the metric sqrt(||Delta||^2 + c^2) - c sees noise.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ect_scale.precision.modes import precision_mode


@dataclass
class RoundingStats:
    mode: str
    t: float
    r: float
    signal: float  # Median over samples of ||Delta|| in fp32 (TF32 off).
    error: float  # Median over samples of ||Delta(mode) - Delta(fp32)||.

    @property
    def ratio(self) -> float:
        return self.error / self.signal if self.signal > 0 else float("inf")


def _eager():
    """Run a compiled module eagerly (a reference pass must not trigger compiles); no-op where unsupported."""
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


@torch.no_grad()
def delta(
    net, x0: torch.Tensor, labels, t: float, r: float, eps: torch.Tensor, mode: str, masks: Optional[dict] = None
) -> torch.Tensor:
    """f(x_t, t) - f(x_r, r) in `mode`, float32 [N,C,H,W] (same noise and dropout masks in both passes).

    `net` may be a `torch.compile`d module: it then runs compiled (its kernels, e.g. fused element-wise chains that
    keep fp32 intermediates, are what compiled training runs); a plain module is forced to run eagerly."""
    n = x0.shape[0]
    tt = torch.full((n,), float(t), device=x0.device)
    rr = torch.full((n,), float(r), device=x0.device)
    compiled = hasattr(net, "_orig_mod")
    with precision_mode(getattr(net, "_orig_mod", net), mode), contextlib.nullcontext() if compiled else _eager():
        f_t = net(x0 + t * eps, tt, labels, dropout_masks=masks).to(torch.float32)
        f_r = net(x0 + r * eps, rr, labels, dropout_masks=masks).to(torch.float32)
    return f_t - f_r


def _norms(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


def measure(
    net,
    x0: torch.Tensor,
    labels,
    t: float,
    r: float,
    modes: Sequence[str],
    seed: int = 0,
    masks: Optional[dict] = None,
    reference: str = "fp32",
    nets: Optional[dict] = None,
) -> list[RoundingStats]:
    """Signal and rounding error of each mode at one (t, r), against `reference` computed by `net` (eagerly) on the
    same inputs. `nets` maps a mode name to another network to run it with (bf16-rounded weights for 'fp16@bf16',
    or a `torch.compile`d `net`)."""
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    eps = torch.randn(x0.shape, generator=gen, device=x0.device)
    ref = delta(net, x0, labels, t, r, eps, reference, masks)
    signal = float(_norms(ref).median())
    out = []
    for mode in modes:
        runner = (nets or {}).get(mode, net)
        err = _norms(delta(runner, x0, labels, t, r, eps, mode.split("@")[0], masks) - ref)
        out.append(RoundingStats(mode, float(t), float(r), signal, float(err.median())))
    return out


def ect_grads(
    net, loss_fn, x0: torch.Tensor, labels, nimg: int, mode: str, seed: int, masks: Optional[dict] = None
) -> torch.Tensor:
    """The flattened gradient of ECT's mean loss in `mode` (parameters in fp32 order; t, eps from `seed`)."""
    params = [p for p in net.parameters() if p.requires_grad]
    net.zero_grad(set_to_none=True)
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    t_gen = torch.Generator().manual_seed(seed)
    with precision_mode(net, mode), _eager():
        out = loss_fn(net, x0, labels, nimg, gen, masks, t_generator=t_gen)
        out.loss.mean().backward()
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).float().flatten() for p in params])
    net.zero_grad(set_to_none=True)
    return flat


def gradient_noise(
    net, loss_fn, batches: Sequence[tuple], nimg: int, modes: Sequence[str], masks: Optional[dict] = None
) -> dict[str, float]:
    """Relative gradient rounding error ||g(mode) - g(fp32)|| / ||g(fp32)|| per mode (median over `batches`), and
    'minibatch': the relative difference between the fp32 gradients of two different batches, the noise SGD
    already lives with. Rounding noise well under the minibatch level does not change what training sees."""
    ref = [ect_grads(net, loss_fn, x0, y, nimg, "fp32", seed=i, masks=masks) for i, (x0, y) in enumerate(batches)]
    out = {}
    for mode in modes:
        errs = [
            float((ect_grads(net, loss_fn, x0, y, nimg, mode, seed=i, masks=masks) - g).norm() / g.norm())
            for i, ((x0, y), g) in enumerate(zip(batches, ref))
        ]
        out[mode] = float(torch.tensor(errs).median())
    if len(ref) >= 2:
        pairs = [float((ref[i] - ref[i + 1]).norm() / ref[i].norm()) for i in range(len(ref) - 1)]
        out["minibatch"] = float(torch.tensor(pairs).median())
    return out


def stage_check(
    module,
    encoder,
    raw: torch.Tensor,
    labels,
    nimg: int,
    ect_cfg,
    mode: str,
    device,
    t_grid: Sequence[float] = (0.5, 2.0, 10.0, 80.0),
) -> Optional[tuple[float, str]]:
    """The trainer's check at a stage start: the worst error/signal ratio of `mode` over `t_grid` (where r > 0) on
    up to 8 of this rank's samples, averaged over ranks (collective; every rank calls it). None for fp32."""
    from ect_scale.ect.schedules import stage_at, t_to_r
    from ect_scale.runtime import dist

    if mode == "fp32":
        return None
    n = min(8, raw.shape[0])
    x0 = encoder.encode(raw[:n], torch.Generator(device=raw.device).manual_seed(0))
    labels = labels[:n] if labels is not None else None
    masks = module.sample_dropout_masks(n, torch.Generator(device=device).manual_seed(1), device=device)
    rows = []
    for t in t_grid:
        r = float(t_to_r(torch.tensor([float(t)]), nimg, ect_cfg))
        if r > 0:
            rows.append(measure(module, x0, labels, t, r, [mode], masks=masks)[0])
    if not rows:
        return None
    vals = dist.all_reduce_(torch.tensor([[x.signal, x.error] for x in rows], device=device)) / dist.get_world_size()
    ratios = (vals[:, 1] / vals[:, 0].clamp(min=1e-30)).tolist()
    i = max(range(len(rows)), key=lambda k: ratios[k])
    text = (
        f"precision check, stage {stage_at(nimg, ect_cfg)} ({mode}): rounding error of f(x_t) - f(x_r) "
        f"{float(vals[i, 1]):.4g} vs signal {float(vals[i, 0]):.4g} at t={rows[i].t:g} "
        f"(pseudo-Huber c {ect_cfg.c:g})"
    )
    return ratios[i], text
