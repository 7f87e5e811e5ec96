"""Seed-to-seed noise, model choice by held-out prediction error, and the held-out-largest-budget check.

The form of a size's curve is chosen by how well it predicts budgets it was not fitted on, not by its in-sample fit
(a 3-parameter floor always fits at least as well in-sample). A held-out budget takes all its seeds with it; the
error at a budget is the log of the prediction over the geometric mean of its seeds' values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ect_scale.runtime.errors import UserError
from ect_scale.scaling.fit import FORMS, N_PARAMS, budget_groups, check_enough, fit_power_law, predict
from ect_scale.scaling.points import Point, arrays, size_of

NOISE_FACTOR = 2.0  # A held-out error above this many seed-noise standard deviations carries a warning.
TIE_REL = 0.02  # The floor form must beat the pure one's held-out error by this fraction to be chosen.


# ----------------------------------------------------------------------------------------------------------------
# Seed noise.


@dataclass
class SeedNoise:
    """Spread of the metric across seeds at equal compute.

    `per_budget`: per compute value, n seeds, mean, std (ddof=1) and std/mean. `pooled_rel_std`: the pooled relative
    std, sqrt(Σ(n_i−1)·(s_i/m_i)² / Σ(n_i−1)); `pooled_log_std` the same for log values (comparable with log-space
    errors). Both are None when no compute value has two seeds.
    """

    per_budget: list[dict[str, float]]
    pooled_rel_std: Optional[float]
    pooled_log_std: Optional[float]
    dof: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def seed_noise(compute_flops: Any, values: Any) -> SeedNoise:
    """The seed-to-seed noise of `values` grouped by equal `compute_flops`."""
    c, v = np.asarray(compute_flops, dtype=float), np.asarray(values, dtype=float)
    groups = budget_groups(c) if len(c) else np.zeros(0, dtype=int)
    rows, rel_ss, log_ss, dof = [], 0.0, 0.0, 0
    for g in np.unique(groups):
        vals = v[groups == g]
        n = len(vals)
        std = float(np.std(vals, ddof=1)) if n > 1 else math.nan
        rows.append(
            {
                "compute_flops": float(c[groups == g][0]),
                "n": n,
                "mean": float(vals.mean()),
                "std": std,
                "rel_std": std / float(vals.mean()) if n > 1 else math.nan,
            }
        )
        if n > 1:
            rel_ss += (n - 1) * (std / float(vals.mean())) ** 2
            log_ss += (n - 1) * float(np.var(np.log(vals), ddof=1))
            dof += n - 1
    pooled = (math.sqrt(rel_ss / dof), math.sqrt(log_ss / dof)) if dof else (None, None)
    return SeedNoise(per_budget=rows, pooled_rel_std=pooled[0], pooled_log_std=pooled[1], dof=dof)


# ----------------------------------------------------------------------------------------------------------------
# Held-out errors and the choice of form.


@dataclass
class Selection:
    """Held-out RMS log errors per form (None: not testable), the chosen form, why, and warnings."""

    method: str
    errors_log: dict[str, Optional[float]]
    chosen: str
    reason: str
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def heldout_error(compute_flops: Any, values: Any, form: str, method: str = "loo") -> Optional[float]:
    """RMS over held-out budgets of log(predicted / geometric mean of measured), or None if not testable.

    method "loo": leave each budget (with all its seeds) out in turn; "last": leave only the largest budget out
    (an extrapolation test). Testable when the remaining budgets can fit the form (≥ parameters + 1 budgets in all).
    """
    c, y = np.asarray(compute_flops, dtype=float), np.log(np.asarray(values, dtype=float))
    groups = budget_groups(c)
    held = {"loo": list(np.unique(groups)), "last": [int(groups.max())]}[method]
    if len(np.unique(groups)) < N_PARAMS[form] + 1:
        return None
    errors = []
    for g in held:
        keep = groups != g
        fit = fit_power_law(c[keep], np.exp(y[keep]), form=form, n_boot=0)
        errors.append(math.log(float(fit.curve(c[~keep][0]))) - float(y[~keep].mean()))
    return math.sqrt(float(np.mean(np.square(errors))))


def select_form(
    points: list[Point], metric: str, method: str = "loo", noise_log_std: Optional[float] = None
) -> Selection:
    """Choose "pure" or "floor" for one size by held-out log error (`heldout_error`); ties go to "pure".

    The floor form (3 parameters) is testable only with ≥ 4 distinct budgets; with fewer, the pure form is chosen
    and `reason` says why. A chosen form whose held-out error exceeds NOISE_FACTOR × the seed noise
    (`noise_log_std`, log space) gets a warning.
    """
    size = size_of(points)
    c, v = arrays(points, metric)
    label = f"size {size}, {metric}"
    check_enough(c, "pure", label)
    return select_form_arrays(c, v, method, noise_log_std, label)


def select_form_arrays(
    compute_flops: Any, values: Any, method: str = "loo", noise_log_std: Optional[float] = None, label: str = "the data"
) -> Selection:
    """`select_form` on arrays."""
    if method not in ("loo", "last"):
        raise UserError(f"unknown held-out method {method!r}", "use 'loo' (leave one budget out) or 'last'")
    n_budgets = len(np.unique(budget_groups(np.asarray(compute_flops, dtype=float))))
    errors = {form: heldout_error(compute_flops, values, form, method) for form in FORMS}
    name = {"loo": "leave-one-budget-out", "last": "leave-largest-budget-out"}[method]
    if errors["pure"] is None:
        chosen, reason = (
            "pure",
            (
                f"only {n_budgets} budgets: no held-out test is possible; the pure form is the only "
                "one that can be fitted"
            ),
        )
    elif errors["floor"] is None:
        chosen, reason = (
            "pure",
            (
                f"only {n_budgets} budgets: the floor form (3 parameters) needs at least 4 to be "
                "tested on held-out data; the pure form is used"
            ),
        )
    else:
        chosen = "floor" if errors["floor"] < (1.0 - TIE_REL) * errors["pure"] else "pure"
        tie = chosen == "pure" and errors["floor"] < errors["pure"]
        reason = f"{name} RMS log error: pure {errors['pure']:.3g}, floor {errors['floor']:.3g}" + (
            f" (within {TIE_REL:.0%}: a tie goes to the simpler pure form)" if tie else ""
        )
    warnings = []
    err = errors[chosen]
    if err is not None and noise_log_std and err > NOISE_FACTOR * noise_log_std:
        warnings.append(
            f"{label}: the chosen {chosen} form's held-out error {err:.3g} is more than "
            f"{NOISE_FACTOR:g}× the seed-to-seed noise {noise_log_std:.3g} (log space): the curve does not "
            "predict unseen budgets to within noise."
        )
    return Selection(method=method, errors_log=errors, chosen=chosen, reason=reason, warnings=warnings)


# ----------------------------------------------------------------------------------------------------------------
# The largest budget, held out.


@dataclass
class Holdout:
    """A fit on all budgets but the largest, its prediction there, and the measurement (geometric mean of seeds)."""

    form: str
    compute_flops: float
    predicted: float
    lo: float
    hi: float
    measured: float
    measured_values: list[float]
    rel_error: float
    log_error: float
    inside_interval: bool
    n_fit_budgets: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def holdout_largest(
    points: list[Point],
    metric: str,
    form: str = "pure",
    n_boot: int = 1000,
    seed: int = 0,
    noise_log_std: Optional[float] = None,
) -> Holdout:
    """Fit `form` on all but the largest budget of one size, predict the largest and compare with its measurement.

    `rel_error` = predicted / measured − 1. A log error above NOISE_FACTOR × `noise_log_std` carries a warning.
    """
    size = size_of(points)
    c, v = arrays(points, metric)
    label = f"size {size}, {metric}"
    groups = budget_groups(c) if len(c) else np.zeros(0, dtype=int)
    last = groups == groups.max() if len(c) else groups.astype(bool)
    check_enough(c[~last], form, f"{label} without its largest budget")
    fit = fit_power_law(c[~last], v[~last], form=form, n_boot=n_boot, seed=seed, label=label)
    pred = predict(fit, float(c[last][0]))
    measured = float(np.exp(np.mean(np.log(v[last]))))
    log_error = math.log(pred.value / measured)
    out = Holdout(
        form=form,
        compute_flops=pred.compute_flops,
        predicted=pred.value,
        lo=pred.lo,
        hi=pred.hi,
        measured=measured,
        measured_values=[float(x) for x in v[last]],
        rel_error=pred.value / measured - 1,
        log_error=log_error,
        inside_interval=bool(pred.lo <= measured <= pred.hi),
        n_fit_budgets=fit.n_budgets,
    )
    if noise_log_std and abs(log_error) > NOISE_FACTOR * noise_log_std:
        out.warnings.append(
            f"{label}: predicting the largest budget from the smaller ones misses by "
            f"{out.rel_error:+.1%}, more than {NOISE_FACTOR:g}× the seed-to-seed noise "
            f"({noise_log_std:.3g} in log space)."
        )
    return out
