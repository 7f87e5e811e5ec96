"""Synthetic scaling-study points for the tests: a known curve times log-normal seed noise."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ect_scale.scaling.points import Point


def curve(compute_flops: np.ndarray, a: float, b: float, e: float = 0.0) -> np.ndarray:
    """y = e + a·(C/1e17)^(−b): the truth, with a at 1e17 FLOPs so the numbers stay readable."""
    return e + a * (np.asarray(compute_flops, dtype=float) / 1e17) ** (-b)


def arrays(
    a: float,
    b: float,
    e: float = 0.0,
    lo_flops: float = 1e17,
    hi_flops: float = 1e20,
    n_budgets: int = 7,
    n_seeds: int = 3,
    noise: float = 0.03,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(compute_flops, values): `n_budgets` log-spaced budgets × `n_seeds` seeds, noise × exp(N(0, noise))."""
    rng = np.random.default_rng(seed)
    c = np.repeat(np.logspace(np.log10(lo_flops), np.log10(hi_flops), n_budgets), n_seeds)
    return c, curve(c, a, b, e) * np.exp(rng.normal(0.0, noise, c.size))


def points(
    size: str,
    params: int,
    metrics: dict[str, tuple[float, float, float]],
    lo_flops: float = 1e17,
    hi_flops: float = 1e20,
    n_budgets: int = 5,
    seeds: Sequence[int] = (0, 1, 2),
    noise: float = 0.02,
    seed: int = 0,
) -> list[Point]:
    """Points of one size; `metrics` maps a name to its true (a, b, e)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.logspace(np.log10(lo_flops), np.log10(hi_flops), n_budgets):
        for s in seeds:
            values = {m: float(curve(c, *abe) * np.exp(rng.normal(0.0, noise))) for m, abe in metrics.items()}
            out.append(
                Point(
                    size=size,
                    params=params,
                    seed=s,
                    budget_nimg=int(c / 1e9),
                    compute_flops=float(c),
                    gpu_hours=c / 1e18,
                    wall_sec=c / 1e15,
                    metrics=values,
                    run_dir=f"runs/{size}-{s}-{c:.0e}",
                )
            )
    return out
