"""Power-law fits of a metric y against training compute C (FLOPs), for one model size and one metric.

Two forms (lower y is better, e.g. FD):
- "pure":  y = a·C^(−b), the power law of compute scaling (Kaplan et al. 2020, "Scaling Laws for Neural Language
  Models"), fitted by least squares in log-log space (closed form);
- "floor": y = e + a·C^(−b), the saturating power law with an irreducible floor e (Hestness et al. 2017, "Deep
  Learning Scaling is Predictable, Empirically"; Henighan et al. 2020), fitted by nonlinear least squares of
  Σ (log y_i − log(e + a·C_i^(−b)))² with 0 ≤ e < min(y) and 0 ≤ b ≤ 10.

Compute is normalised internally by its geometric mean `c_ref_flops` (y = e + a_ref·(C/c_ref)^(−b)); `Fit.a` is
`a` in the original units (C in FLOPs). Confidence intervals are percentile bootstrap intervals (Efron & Tibshirani
1993): points are resampled with replacement from a seeded numpy Generator; resamples with fewer distinct compute
values than the form needs are skipped and counted. With few points, percentile intervals run somewhat narrow: in a
synthetic check with 7 budgets × 3 seeds, the 95 % interval of b held the true exponent about 91 % of the time
(about 94 % with 10 budgets × 5 seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from scipy.optimize import least_squares

from ect_scale.runtime.errors import UserError
from ect_scale.scaling.points import Point, arrays, size_of

FORMS = ("pure", "floor")
N_PARAMS = {"pure": 2, "floor": 3}
B_BOUNDS_FLOOR = (0.0, 10.0)
R2_WARN = 0.9  # Fits with R² (log space) below this carry a warning.
_E_GRID = (0.0, 0.25, 0.5, 0.75, 0.9, 0.97)  # Floor starts, as fractions of min(y).
_E_MAX = 1.0 - 1e-6  # e < min(y): the upper bound of e as a fraction of min(y).


@dataclass
class Fit:
    """A fitted curve y = e + a_ref·(C/c_ref_flops)^(−b) (e = 0 for the pure form) with bootstrap samples.

    `r2_log` and `rmse_log` are measured in log space: R² = 1 − Σ(log y − log ŷ)² / Σ(log y − mean log y)², and
    RMSE = sqrt(mean (log y − log ŷ)²) (natural log; ≈ relative error for small values).
    `boot` holds one row (a_ref, b, e) per bootstrap resample that was used.
    """

    form: str
    a_ref: float
    b: float
    e: float
    c_ref_flops: float
    r2_log: float
    rmse_log: float
    n_points: int
    n_budgets: int
    compute_range_flops: tuple[float, float]
    boot: np.ndarray
    n_boot_requested: int
    level: float = 0.95
    warnings: list[str] = field(default_factory=list)

    @property
    def a(self) -> float:
        """The prefactor a of y = e + a·C^(−b) with C in FLOPs."""
        return float(self.a_ref * self.c_ref_flops**self.b)

    def curve(self, compute_flops: Any) -> np.ndarray:
        """The fitted metric at `compute_flops` (scalar or array)."""
        return curve(self.a_ref, self.b, self.e, self.c_ref_flops, compute_flops)

    def ci(self, name: str) -> tuple[float, float]:
        """The percentile bootstrap CI at `level` of "a", "b" or "e" (NaN, NaN without bootstrap samples)."""
        if len(self.boot) == 0:
            return (math.nan, math.nan)
        if name == "a":
            with np.errstate(over="ignore"):
                samples = self.boot[:, 0] * self.c_ref_flops ** self.boot[:, 1]
        else:
            samples = self.boot[:, {"a_ref": 0, "b": 1, "e": 2}[name]]
        tail = 50.0 * (1.0 - self.level)
        lo, hi = np.percentile(samples, [tail, 100.0 - tail])
        return (float(lo), float(hi))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the bootstrap samples)."""
        params = {"a": self.a, "b": self.b, "e": self.e, "a_ref": self.a_ref, "c_ref_flops": self.c_ref_flops}
        return {
            "form": self.form,
            "params": params,
            "ci": {name: list(self.ci(name)) for name in ("a", "b", "e")},
            "ci_level": self.level,
            "r2_log": self.r2_log,
            "rmse_log": self.rmse_log,
            "n_points": self.n_points,
            "n_budgets": self.n_budgets,
            "compute_range_flops": list(self.compute_range_flops),
            "n_boot_used": int(len(self.boot)),
            "n_boot_requested": self.n_boot_requested,
            "warnings": list(self.warnings),
        }


def curve(a_ref: float, b: float, e: float, c_ref_flops: float, compute_flops: Any) -> np.ndarray:
    """y = e + a_ref·(C/c_ref_flops)^(−b), evaluated in log space so large C never overflows."""
    x = np.log(np.asarray(compute_flops, dtype=float) / c_ref_flops)
    return e + a_ref * np.exp(-b * x)


def budget_groups(compute_flops: np.ndarray) -> np.ndarray:
    """An integer id per point; points with the same compute (to 1 part in 10⁶) share one, ordered by compute."""
    return np.unique(np.round(np.log(np.asarray(compute_flops, dtype=float)), 6), return_inverse=True)[1].ravel()


def check_enough(compute_flops: np.ndarray, form: str, label: str = "the data") -> None:
    """UserError unless there are as many distinct compute values (budgets) as the form has parameters."""
    if form not in FORMS:
        raise UserError(f"unknown fit form {form!r}", f"use one of {', '.join(FORMS)}")
    n = len(np.unique(budget_groups(compute_flops))) if len(compute_flops) else 0
    if n < N_PARAMS[form]:
        raise UserError(
            f"{label} has {n} finished budget{'s' * (n != 1)}; a {form} power-law fit needs at least {N_PARAMS[form]}",
            "finish (or re-run) more training budgets for it, or leave it out",
        )


# ----------------------------------------------------------------------------------------------------------------
# Point estimates. x = log(C/c_ref), y = log(metric).


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares y = la − b·x: returns (la, b)."""
    xm, ym = x.mean(), y.mean()
    sxx = float(np.sum((x - xm) ** 2))
    slope = float(np.sum((x - xm) * (y - ym)) / sxx) if sxx > 0 else 0.0
    return float(ym - slope * xm), -slope


def _floor_residual(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    la, b, e = theta
    return y - np.log(e + np.exp(la - b * x))


def _floor_jacobian(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    la, b, e = theta
    t = np.exp(la - b * x)
    m = e + t
    return np.stack([-t / m, t * x / m, -1.0 / m], axis=1)


def _floor_starts(x: np.ndarray, y: np.ndarray, extra: Optional[np.ndarray]) -> list[np.ndarray]:
    """Candidate (la, b, e) starts: a pure fit of log(y − e) for e on a grid of fractions of min(y), plus `extra`."""
    y_min = float(np.exp(y.min()))
    starts = [] if extra is None else [np.asarray(extra, dtype=float)]
    for frac in _E_GRID:
        e = frac * y_min
        la, b = _line(x, np.log(np.exp(y) - e))
        starts.append(np.array([la, b, e]))
    lo, hi = _floor_bounds(y_min)
    return [np.clip(s, lo, hi) for s in starts]


def _floor_bounds(y_min: float) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([-np.inf, B_BOUNDS_FLOOR[0], 0.0]), np.array([np.inf, B_BOUNDS_FLOOR[1], _E_MAX * y_min]))


def _solve_floor(x: np.ndarray, y: np.ndarray, n_starts: int, extra: Optional[np.ndarray] = None) -> np.ndarray:
    """(la, b, e) minimising Σ (y − log(e + exp(la − b·x)))², from the `n_starts` best grid starts."""
    starts = _floor_starts(x, y, extra)
    costs = [float(np.sum(_floor_residual(s, x, y) ** 2)) for s in starts]
    lo, hi = _floor_bounds(float(np.exp(y.min())))
    best, best_cost = starts[int(np.argmin(costs))], math.inf
    for i in np.argsort(costs)[:n_starts]:
        res = least_squares(
            _floor_residual, starts[i], jac=_floor_jacobian, bounds=(lo, hi), args=(x, y), method="trf", x_scale="jac"
        )
        if res.cost * 2 < best_cost:
            best, best_cost = res.x, res.cost * 2
    best = np.asarray(best, dtype=float)
    if best[2] < 1e-8 * float(np.exp(y.min())):  # At the bound (the solver keeps a hair inside it): no floor.
        best[2] = 0.0
    return best


def _solve(form: str, x: np.ndarray, y: np.ndarray, n_starts: int, extra: Optional[np.ndarray] = None) -> np.ndarray:
    """(la, b, e) of the form's least-squares fit in log space."""
    if form == "pure":
        return np.array([*_line(x, y), 0.0])
    return _solve_floor(x, y, n_starts, extra)


# ----------------------------------------------------------------------------------------------------------------
# Fits with bootstrap CIs.


def fit_power_law(
    compute_flops: Any,
    values: Any,
    *,
    form: str = "pure",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    label: str = "the data",
) -> Fit:
    """Fit `form` ("pure": y = a·C^(−b); "floor": y = e + a·C^(−b)) to (compute_flops, values).

    All points are used, several per compute value (seeds) included. `n_boot` bootstrap resamples (seeded by
    `seed`) give the CIs; `label` names the data in errors and warnings (e.g. "size w16, fd_1step").
    """
    c = np.asarray(compute_flops, dtype=float)
    v = np.asarray(values, dtype=float)
    check_enough(c, form, label)
    c_ref = float(np.exp(np.mean(np.log(c))))
    x, y = np.log(c / c_ref), np.log(v)
    la, b, e = _solve(form, x, y, n_starts=3)
    pred = np.log(e + np.exp(la - b * x))
    ss_res, ss_tot = float(np.sum((y - pred) ** 2)), float(np.sum((y - y.mean()) ** 2))
    fit = Fit(
        form=form,
        a_ref=float(np.exp(la)),
        b=float(b),
        e=float(e),
        c_ref_flops=c_ref,
        r2_log=1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        rmse_log=math.sqrt(ss_res / len(y)),
        n_points=len(y),
        n_budgets=int(len(np.unique(budget_groups(c)))),
        compute_range_flops=(float(c.min()), float(c.max())),
        boot=_bootstrap(form, x, y, c, np.array([la, b, e]), n_boot, seed),
        n_boot_requested=n_boot,
        level=level,
    )
    fit.warnings = fit_warnings(fit, label, float(v.min()))
    return fit


def fit_points(
    points: list[Point], metric: str, form: str = "pure", n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Fit:
    """`fit_power_law` of `metric` over the usable points of one size (ok, with the metric; see `split_usable`)."""
    size = size_of(points)
    c, v = arrays(points, metric)
    return fit_power_law(c, v, form=form, n_boot=n_boot, seed=seed, level=level, label=f"size {size}, {metric}")


def _bootstrap(
    form: str, x: np.ndarray, y: np.ndarray, c: np.ndarray, theta: np.ndarray, n_boot: int, seed: int
) -> np.ndarray:
    """Rows (a_ref, b, e) of the fits to `n_boot` resamples; degenerate resamples are skipped."""
    rng = np.random.default_rng(seed)
    groups = budget_groups(c)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    g = np.sort(groups[idx], axis=1)
    distinct = 1 + np.count_nonzero(np.diff(g, axis=1), axis=1) if len(x) > 1 else np.ones(n_boot, dtype=int)
    idx = idx[distinct >= N_PARAMS[form]]
    if form == "pure":  # Closed form, all resamples at once.
        xs, ys = x[idx], y[idx]
        xm, ym = xs.mean(axis=1, keepdims=True), ys.mean(axis=1, keepdims=True)
        slope = np.sum((xs - xm) * (ys - ym), axis=1) / np.sum((xs - xm) ** 2, axis=1)
        la = ym[:, 0] - slope * xm[:, 0]
        return np.stack([np.exp(la), -slope, np.zeros_like(la)], axis=1)
    rows = [_solve_floor(x[i], y[i], n_starts=1, extra=theta) for i in idx]
    rows = np.array(rows).reshape(-1, 3)
    rows[:, 0] = np.exp(rows[:, 0])
    return rows


def fit_warnings(fit: Fit, label: str, y_min: float) -> list[str]:
    """Plain-language warnings about a fit: poor R², an exponent CI that includes 0, too few budgets, a floor or
    exponent pinned at its bound, many degenerate bootstrap resamples."""
    out = []
    name = f"{label}, {fit.form} fit"
    if not math.isnan(fit.r2_log) and fit.r2_log < R2_WARN:
        out.append(f"{name}: R² (log space) is {fit.r2_log:.2f} < {R2_WARN}: the curve describes the points poorly.")
    lo, hi = fit.ci("b")
    if lo <= 0.0 <= hi:
        out.append(
            f"{name}: the exponent b's {fit.level:.0%} CI [{lo:.3g}, {hi:.3g}] includes 0: the data do not "
            "show the metric falling with compute."
        )
    if fit.n_budgets <= N_PARAMS[fit.form]:
        out.append(
            f"{name}: {fit.n_budgets} budgets for {N_PARAMS[fit.form]} parameters: no budget is left to "
            "check the curve's shape; the CIs reflect seed-to-seed noise only."
        )
    if fit.form == "floor" and fit.e >= 0.99 * _E_MAX * y_min:
        out.append(f"{name}: the floor e = {fit.e:.4g} sits at the smallest measured value: it is not identified.")
    if fit.form == "floor" and fit.b >= 0.99 * B_BOUNDS_FLOOR[1]:
        out.append(f"{name}: the exponent b = {fit.b:.3g} sits at its bound {B_BOUNDS_FLOOR[1]}: it is not identified.")
    used = len(fit.boot)
    if fit.n_boot_requested and used < 0.8 * fit.n_boot_requested:
        out.append(
            f"{name}: only {used} of {fit.n_boot_requested} bootstrap resamples had {N_PARAMS[fit.form]} or "
            "more distinct budgets; the CIs are rough."
        )
    return out


# ----------------------------------------------------------------------------------------------------------------
# Predictions.


@dataclass
class Prediction:
    """The fitted curve at `compute_flops` and its bootstrap interval [lo, hi] at `level`.

    The interval is the spread of the bootstrap curves (uncertainty of the fitted curve). One new run also varies by
    the seed-to-seed noise around it (`holdout.seed_noise`). `extrapolation` = compute / largest fitted compute.
    """

    compute_flops: float
    value: float
    lo: float
    hi: float
    level: float
    n_boot: int
    extrapolation: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def predict(fit: Fit, compute_flops: float) -> Prediction:
    """The prediction of `fit` at `compute_flops`, with the percentile interval of its bootstrap curves."""
    value = float(fit.curve(compute_flops))
    lo = hi = math.nan
    if len(fit.boot):
        x = math.log(compute_flops / fit.c_ref_flops)
        samples = fit.boot[:, 2] + fit.boot[:, 0] * np.exp(-fit.boot[:, 1] * x)
        tail = 50.0 * (1.0 - fit.level)
        lo, hi = (float(q) for q in np.percentile(samples, [tail, 100.0 - tail]))
    return Prediction(
        compute_flops=float(compute_flops),
        value=value,
        lo=lo,
        hi=hi,
        level=fit.level,
        n_boot=int(len(fit.boot)),
        extrapolation=float(compute_flops / fit.compute_range_flops[1]),
    )
