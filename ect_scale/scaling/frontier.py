"""Across model sizes: the compute-efficient frontier and where one size's fitted curve crosses another's.

The frontier at compute C is the size whose fitted curve is lowest there (the "compute-efficient frontier" of
Kaplan et al. 2020 and Hoffmann et al. 2022, here for a lower-is-better image metric). By default a size competes
only within its measured compute range, so the frontier is not made of extrapolations; `extrapolate=True` lets
every size compete everywhere. `measured_envelope` is the same question asked of the points themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Iterable, Optional

import numpy as np
from scipy.optimize import brentq

from ect_scale.runtime.errors import UserError
from ect_scale.scaling.fit import Fit, budget_groups
from ect_scale.scaling.points import Point, by_size, split_usable

_REL_TOL = 1e-9  # Range ends are compared with this relative slack.


def _covers(fit: Fit, compute_flops: float) -> bool:
    lo, hi = fit.compute_range_flops
    return lo * (1 - _REL_TOL) <= compute_flops <= hi * (1 + _REL_TOL)


def best_size_for(fits: dict[str, Fit], compute_flops: float, extrapolate: bool = False) -> Optional[str]:
    """The size whose fitted curve is lowest at `compute_flops` (None if no size's measured range covers it and
    `extrapolate` is off)."""
    if not fits:
        raise UserError("no size has a fitted curve", "fit at least one size (it needs 2 finished budgets)")
    values = {s: float(f.curve(compute_flops)) for s, f in fits.items() if extrapolate or _covers(f, compute_flops)}
    return min(values, key=values.__getitem__) if values else None


@dataclass
class Frontier:
    """The best size and its fitted value on a log-spaced grid of compute values."""

    grid_flops: np.ndarray
    best: list[Optional[str]]
    values: np.ndarray
    extrapolate: bool

    def segments(self) -> list[dict[str, Any]]:
        """Contiguous compute ranges with the same best size: [{size, from_flops, to_flops}]."""
        out: list[dict[str, Any]] = []
        for c, s in zip(self.grid_flops, self.best, strict=True):
            if out and out[-1]["size"] == s:
                out[-1]["to_flops"] = float(c)
            else:
                out.append({"size": s, "from_flops": float(c), "to_flops": float(c)})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid_flops": self.grid_flops.tolist(),
            "best": list(self.best),
            "values": [None if math.isnan(v) else float(v) for v in self.values],
            "extrapolate": self.extrapolate,
            "segments": self.segments(),
        }


def frontier(
    fits: dict[str, Fit], n_grid: int = 200, extrapolate: bool = False, span_flops: Optional[tuple[float, float]] = None
) -> Frontier:
    """The frontier over `n_grid` log-spaced compute values spanning all sizes' measured ranges (or `span_flops`)."""
    if not fits:
        raise UserError("no size has a fitted curve", "fit at least one size (it needs 2 finished budgets)")
    lo, hi = span_flops or (
        min(f.compute_range_flops[0] for f in fits.values()),
        max(f.compute_range_flops[1] for f in fits.values()),
    )
    grid = np.logspace(math.log10(lo), math.log10(hi), n_grid)
    best = [best_size_for(fits, float(c), extrapolate) for c in grid]
    values = np.array([float(fits[s].curve(c)) if s else math.nan for c, s in zip(grid, best, strict=True)])
    return Frontier(grid_flops=grid, best=best, values=values, extrapolate=extrapolate)


def measured_envelope(points: Iterable[Point], metric: str) -> list[dict[str, Any]]:
    """The measured lower envelope: (size, budget) points, seeds averaged geometrically, that are lower than every
    point at less or equal compute. Sorted by compute."""
    rows = []
    for size, group in by_size(points).items():
        used, _ = split_usable(group, metric)
        if not used:
            continue
        c = np.array([p.compute_flops for p in used])
        v = np.array([p.metrics[metric] for p in used])
        groups = budget_groups(c)
        for g in np.unique(groups):
            rows.append((float(c[groups == g][0]), float(np.exp(np.mean(np.log(v[groups == g])))), size))
    out, best = [], math.inf
    for c, v, size in sorted(rows):
        if v < best:
            best = v
            out.append({"size": size, "compute_flops": c, "value": v})
    return out


def crossings(fit_a: Fit, fit_b: Fit, lo_flops: float, hi_flops: float, n_grid: int = 400) -> list[float]:
    """Compute values in [lo_flops, hi_flops] where the two fitted curves are equal (sign changes, then Brent)."""

    def diff(log_c: float) -> float:
        return math.log(float(fit_a.curve(math.exp(log_c)))) - math.log(float(fit_b.curve(math.exp(log_c))))

    grid = np.linspace(math.log(lo_flops), math.log(hi_flops), n_grid)
    d = np.array([diff(x) for x in grid])
    out = []
    for i in np.nonzero(np.sign(d[:-1]) * np.sign(d[1:]) < 0)[0]:
        out.append(math.exp(brentq(diff, grid[i], grid[i + 1])))
    return out


def compare_sizes(fits: dict[str, Fit], params: dict[str, int]) -> list[dict[str, Any]]:
    """For each pair of consecutive fitted sizes (by parameter count): is the larger one lower at equal compute?

    Each entry: small, large, their exponents, the common measured range, the fraction of it where the larger size is
    lower, the crossings over both ranges (each marked measured if inside the common range), and a sentence.
    """
    sizes = sorted(fits, key=lambda s: (params[s], s))
    out = []
    for small, large in pairwise(sizes):
        fs, fl = fits[small], fits[large]
        lo, hi = (
            max(fs.compute_range_flops[0], fl.compute_range_flops[0]),
            min(fs.compute_range_flops[1], fl.compute_range_flops[1]),
        )
        span = (
            min(fs.compute_range_flops[0], fl.compute_range_flops[0]),
            max(fs.compute_range_flops[1], fl.compute_range_flops[1]),
        )
        frac = None
        if lo < hi:
            grid = np.logspace(math.log10(lo), math.log10(hi), 100)
            frac = float(np.mean(fl.curve(grid) < fs.curve(grid)))
        cross = [{"compute_flops": c, "measured": lo <= c <= hi} for c in crossings(fs, fl, *span)]
        out.append(
            {
                "small": small,
                "large": large,
                "b_small": fs.b,
                "b_large": fl.b,
                "common_range_flops": [lo, hi] if lo < hi else None,
                "large_lower_fraction": frac,
                "crossings": cross,
                "summary": _pair_summary(small, large, fs, fl, frac, cross, span),
            }
        )
    return out


def _pair_summary(
    small: str,
    large: str,
    fs: Fit,
    fl: Fit,
    frac: Optional[float],
    cross: list[dict[str, Any]],
    span: tuple[float, float],
) -> str:
    """One sentence on which of two sizes is more compute-efficient where."""
    if not cross:
        large_lower = float(fl.curve(span[1])) < float(fs.curve(span[1]))
        lo, hi = (
            max(fs.compute_range_flops[0], fl.compute_range_flops[0]),
            min(fs.compute_range_flops[1], fl.compute_range_flops[1]),
        )
        measured = (
            f"measured together from {lo:.3g} to {hi:.3g} FLOPs" if frac is not None else "no common measured range"
        )
        return (
            f"{large if large_lower else small} is lower than {small if large_lower else large} at equal compute "
            f"on the fitted curves from {span[0]:.3g} to {span[1]:.3g} FLOPs ({measured}; beyond it extrapolated)."
        )
    parts = []
    for c in cross:
        above = (
            large if float(fl.curve(c["compute_flops"] * 1.01)) < float(fs.curve(c["compute_flops"] * 1.01)) else small
        )
        parts.append(
            f"{above} is lower above {c['compute_flops']:.3g} FLOPs "
            f"({'measured' if c['measured'] else 'extrapolated'} crossing)"
        )
    return f"{small} vs {large}: " + "; ".join(parts) + "."
