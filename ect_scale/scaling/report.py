"""A scaling study's analysis: per-size fits, model choice, held-out checks, the frontier and a prediction.

`analyse(points, metrics, predict_at_flops)` returns a JSON-ready dict; `write_report(analysis, out_dir)` writes
`fits.json`, `report.md` (see `ect_scale.scaling.markdown`) and one log-log PNG per metric (`ect_scale.scaling.plot`).
Sizes that cannot be fitted are reported with the reason; only a metric that no size can fit is an error.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from ect_scale.runtime.errors import UserError
from ect_scale.scaling.fit import FORMS, N_PARAMS, Fit, budget_groups, fit_points, predict
from ect_scale.scaling.frontier import best_size_for, compare_sizes, frontier, measured_envelope
from ect_scale.scaling.holdout import holdout_largest, seed_noise, select_form
from ect_scale.scaling.markdown import render
from ect_scale.scaling.plot import plot_metric
from ect_scale.scaling.points import Point, arrays, by_size, metric_names, split_usable


def analyse(
    points: Sequence[Point],
    metrics: Optional[Sequence[str]] = None,
    predict_at_flops: Optional[float] = None,
    n_boot: int = 1000,
    seed: int = 0,
    method: str = "loo",
) -> dict[str, Any]:
    """The whole study's analysis as a JSON-ready dict (see the module docstring).

    `metrics`: the metrics to analyse (default: every metric of the points). `predict_at_flops`: where to predict
    (default: 4× the largest measured compute). `n_boot`, `seed`: bootstrap resamples and their seed. `method`:
    held-out test for the choice of form, "loo" (leave one budget out) or "last" (leave the largest out).
    """
    points = list(points)
    if not points:
        raise UserError("the points table is empty", "pass the study's points (missing and failed ones included)")
    present = metric_names(p for p in points if p.status == "ok")
    metrics = list(metrics) if metrics is not None else present
    for m in metrics:
        if m not in present:
            raise UserError(
                f"metric {m!r} appears in no finished (status ok) point; present: {present or 'none'}",
                "choose a metric the runs measured, or finish the evaluations first",
            )
    if not metrics:
        raise UserError("no finished point has a metric", "evaluate the runs (e.g. FD) before the analysis")
    ok_compute = [p.compute_flops for p in points if p.status == "ok"]
    target = float(predict_at_flops or 4.0 * max(ok_compute))
    return {
        "n_points": len(points),
        "n_ok": sum(p.status == "ok" for p in points),
        "table": [p.to_dict() for p in points],
        "n_boot": n_boot,
        "seed": seed,
        "method": method,
        "predict_at_flops": target,
        "predict_at_default": predict_at_flops is None,
        "metrics": {m: analyse_metric(points, m, target, n_boot, seed, method) for m in metrics},
    }


def analyse_metric(
    points: list[Point], metric: str, predict_at_flops: float, n_boot: int = 1000, seed: int = 0, method: str = "loo"
) -> dict[str, Any]:
    """One metric: every size (fitted or why not), the frontier, size comparisons and the prediction."""
    groups = by_size(points)
    sizes, fits = {}, {}
    for size, group in groups.items():
        sizes[size], fit = analyse_size(group, metric, predict_at_flops, n_boot, seed, method)
        if fit is not None:
            fits[size] = fit
    if not fits:
        why = "; ".join(f"{s}: {d['reason']}" for s, d in sizes.items())
        raise UserError(
            f"no size can be fitted for {metric} ({why})", "finish at least 2 training budgets of some size"
        )
    params = {s: groups[s][0].params for s in fits}
    front = frontier(fits)
    per_size = {s: sizes[s]["prediction"] for s in fits}
    out = {
        "metric": metric,
        "sizes": sizes,
        "not_fitted": {s: d["reason"] for s, d in sizes.items() if not d["fitted"]},
        "frontier": front.to_dict(),
        "envelope": measured_envelope(points, metric),
        "comparisons": compare_sizes(fits, params),
        "best_size_per_decade": best_per_decade(fits),
        "prediction": {
            "compute_flops": predict_at_flops,
            "per_size": per_size,
            "best_size": min(per_size, key=lambda s: per_size[s]["value"]),
        },
    }
    out["warnings"] = [w for d in sizes.values() for w in d["warnings"]]
    return out


def analyse_size(
    points: list[Point], metric: str, predict_at_flops: float, n_boot: int, seed: int, method: str
) -> tuple[dict[str, Any], Optional[Fit]]:
    """(the size's entry, its chosen fit or None when it cannot be fitted)."""
    used, excluded = split_usable(points, metric)
    c, v = arrays(used, metric) if used else (np.zeros(0), np.zeros(0))
    n_budgets = len(np.unique(budget_groups(c))) if len(c) else 0
    entry: dict[str, Any] = {
        "params": points[0].params,
        "n_budgets": n_budgets,
        "points": [
            {"seed": p.seed, "budget_nimg": p.budget_nimg, "compute_flops": p.compute_flops, "value": p.metrics[metric]}
            for p in used
        ],
        "excluded": [
            {
                "seed": p.seed,
                "budget_nimg": p.budget_nimg,
                "compute_flops": p.compute_flops,
                "status": p.status,
                "reason": why,
            }
            for p, why in excluded
        ],
        "fitted": False,
        "reason": "",
        "fits": {},
        "fit_errors": {},
        "warnings": [],
    }
    if n_budgets < N_PARAMS["pure"]:
        entry["reason"] = (
            f"size {points[0].size} has {n_budgets} finished budget{'s' * (n_budgets != 1)} with "
            f"{metric}; a fit needs at least {N_PARAMS['pure']}"
        )
        return entry, None
    noise = seed_noise(c, v)
    entry["seed_noise"] = noise.to_dict()
    fits: dict[str, Fit] = {}
    for form in FORMS:
        if n_budgets < N_PARAMS[form]:
            entry["fit_errors"][form] = f"{n_budgets} budgets; the {form} form needs at least {N_PARAMS[form]}"
            continue
        fits[form] = fit_points(used, metric, form, n_boot=n_boot, seed=seed)
        entry["fits"][form] = fits[form].to_dict()
    selection = select_form(used, metric, method, noise.pooled_log_std)
    chosen = fits[selection.chosen]
    entry.update(fitted=True, selection=selection.to_dict(), chosen=selection.chosen)
    entry["prediction"] = predict(chosen, predict_at_flops).to_dict()
    try:
        hold = holdout_largest(used, metric, selection.chosen, n_boot, seed, noise.pooled_log_std)
        entry["holdout_largest"] = hold.to_dict()
        hold_warnings = hold.warnings
    except UserError as exc:
        entry["holdout_largest"] = {"error": exc.what}
        hold_warnings = []
    entry["warnings"] = chosen.warnings + selection.warnings + hold_warnings
    return entry, chosen


def best_per_decade(fits: dict[str, Fit]) -> list[dict[str, Any]]:
    """The best size at each power of ten of compute within the measured span (a size competes within its measured
    range; where none covers a decade, all compete and the row is marked extrapolated)."""
    lo = min(f.compute_range_flops[0] for f in fits.values())
    hi = max(f.compute_range_flops[1] for f in fits.values())
    rows = []
    for k in range(math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9) + 1):
        c = 10.0**k
        size, extrapolated = best_size_for(fits, c), False
        if size is None:
            size, extrapolated = best_size_for(fits, c, extrapolate=True), True
        rows.append(
            {"compute_flops": c, "size": size, "value": float(fits[size].curve(c)), "extrapolated": extrapolated}
        )
    return rows


def write_report(analysis: dict[str, Any], out_dir: str, plots: bool = True) -> dict[str, str]:
    """Write `fits.json`, `report.md` and (with `plots`) `<metric>.png` per metric into `out_dir`; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"fits.json": os.path.join(out_dir, "fits.json"), "report.md": os.path.join(out_dir, "report.md")}
    if plots:
        for metric, data in analysis["metrics"].items():
            paths[f"{metric}.png"] = plot_metric(data, os.path.join(out_dir, f"{_file_name(metric)}.png"))
    with open(paths["fits.json"], "w") as f:
        json.dump(_jsonable(analysis), f, indent=1, allow_nan=False)
        f.write("\n")
    with open(paths["report.md"], "w") as f:
        f.write(render(analysis, {k: os.path.basename(v) for k, v in paths.items() if k.endswith(".png")}))
    return paths


def _file_name(metric: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in metric)


def _jsonable(value: Any) -> Any:
    """NaN and infinities become None; numpy scalars and tuples become plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
