"""`report.md` of a scaling analysis (`ect_scale.scaling.report.analyse`): markdown tables a person can read."""

from __future__ import annotations

import math
from typing import Any, Optional

FORM_NAMES = {"pure": "y = a·C^(−b)", "floor": "y = e + a·C^(−b)"}


def fmt(x: Optional[float], digits: int = 3) -> str:
    """A number in `digits` significant figures, or an em dash for None / NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}g}"


def _ci(lo: Optional[float], hi: Optional[float]) -> str:
    return "—" if lo is None or hi is None or math.isnan(lo) else f"[{fmt(lo)}, {fmt(hi)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def render(analysis: dict[str, Any], png_names: dict[str, str]) -> str:
    """The whole report; `png_names` maps `<metric>.png` to the image file next to the report."""
    n_bad = analysis["n_points"] - analysis["n_ok"]
    lines = [
        "# Scaling fits",
        "",
        f"{analysis['n_points']} points: {analysis['n_ok']} ok, {n_bad} missing or failed (listed at the end, not "
        f"fitted). Forms: pure {FORM_NAMES['pure']}; floor {FORM_NAMES['floor']} (C = training compute in FLOPs). "
        f"CIs: 95 % percentile bootstrap over {analysis['n_boot']} resamples of the points (seed {analysis['seed']}). "
        "R², RMSE and errors are in natural-log space (≈ relative error). The form is chosen by held-out error "
        f"({'leave one budget out' if analysis['method'] == 'loo' else 'leave the largest budget out'}), not by "
        "in-sample fit.",
    ]
    for metric, data in analysis["metrics"].items():
        lines += ["", *_metric_section(metric, data, png_names.get(f"{metric}.png"), analysis)]
    bad = [p for p in analysis["table"] if p["status"] != "ok"]
    if bad:
        lines += ["", "## Missing and failed points", ""]
        lines += _table(
            ["size", "seed", "budget (img)", "status", "reason", "run dir"],
            [[p["size"], str(p["seed"]), str(p["budget_nimg"]), p["status"], p["reason"], p["run_dir"]] for p in bad],
        )
    return "\n".join(lines) + "\n"


def _metric_section(metric: str, data: dict[str, Any], png: Optional[str], analysis: dict[str, Any]) -> list[str]:
    lines = [f"## {metric}", ""]
    if png:
        lines += [f"![{metric} against training compute]({png})", ""]
    lines += ["### Fits", ""]
    lines += _table(
        [
            "size",
            "form",
            "chosen",
            "a",
            "exponent b [95 % CI]",
            "floor e [95 % CI]",
            "R² (log)",
            "RMSE (log)",
            "held-out error (log)",
            "resamples used",
        ],
        _fit_rows(data),
    )
    lines += ["", "### Checks", ""]
    lines += _table(
        [
            "size",
            "chosen form, why",
            "largest budget: predicted [95 % int.] vs measured",
            "error",
            "seed noise (rel. std)",
        ],
        _check_rows(data),
    )
    for size, why in data["not_fitted"].items():
        lines.append(f"\nNot fitted: **{size}**: {why}.")
    excluded = [(s, e) for s, d in data["sizes"].items() for e in d["excluded"]]
    if excluded:
        lines += [
            "",
            "Points left out of these fits: "
            + "; ".join(f"{s} seed {e['seed']} budget {e['budget_nimg']} ({e['reason']})" for s, e in excluded)
            + ".",
        ]
    lines += ["", *_frontier_lines(data), "", *_prediction_lines(data, analysis)]
    if data["warnings"]:
        lines += ["", "### Warnings", ""] + [f"- {w}" for w in data["warnings"]]
    return lines


def _fit_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for size, d in data["sizes"].items():
        for form in ("pure", "floor"):
            fit = d["fits"].get(form)
            if fit is None:
                continue
            err = d["selection"]["errors_log"].get(form)
            rows.append(
                [
                    size,
                    form,
                    "✓" if d["chosen"] == form else "",
                    fmt(fit["params"]["a"]),
                    f"{fmt(fit['params']['b'])} {_ci(*fit['ci']['b'])}",
                    f"{fmt(fit['params']['e'])} {_ci(*fit['ci']['e'])}" if form == "floor" else "0",
                    fmt(fit["r2_log"]),
                    fmt(fit["rmse_log"]),
                    fmt(err),
                    f"{fit['n_boot_used']}/{fit['n_boot_requested']}",
                ]
            )
    return rows


def _check_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for size, d in data["sizes"].items():
        if not d["fitted"]:
            continue
        hold = d["holdout_largest"]
        if "error" in hold:
            held, err = f"not possible: {hold['error']}", "—"
        else:
            held = (
                f"{fmt(hold['predicted'])} {_ci(hold['lo'], hold['hi'])} vs {fmt(hold['measured'])} "
                f"(at {fmt(hold['compute_flops'])} FLOPs, {len(hold['measured_values'])} seeds)"
            )
            err = f"{hold['rel_error']:+.1%}" + ("" if hold["inside_interval"] else " (outside interval)")
        noise = d["seed_noise"]["pooled_rel_std"]
        rows.append(
            [
                size,
                f"{d['chosen']}: {d['selection']['reason']}",
                held,
                err,
                "— (one seed per budget)" if noise is None else f"{noise:.1%}",
            ]
        )
    return rows


def _frontier_lines(data: dict[str, Any]) -> list[str]:
    lines = [
        "### Compute-efficient frontier",
        "",
        "Lowest fitted curve at each compute (a size competes only within its measured range):",
        "",
    ]
    for seg in data["frontier"]["segments"]:
        who = seg["size"] or "no size measured here"
        lines.append(f"- {fmt(seg['from_flops'])} – {fmt(seg['to_flops'])} FLOPs: **{who}**")
    lines += ["", "Best size per compute decade:", ""]
    lines += _table(
        ["compute (FLOPs)", "best size", "fitted value", ""],
        [
            [fmt(r["compute_flops"]), r["size"], fmt(r["value"]), "extrapolated" if r["extrapolated"] else ""]
            for r in data["best_size_per_decade"]
        ],
    )
    lines += [
        "",
        "Measured lower envelope (seed geometric means): "
        + ", ".join(f"{r['size']} at {fmt(r['compute_flops'])} FLOPs: {fmt(r['value'])}" for r in data["envelope"])
        + ".",
    ]
    if data["comparisons"]:
        lines += ["", "Larger vs smaller models at equal compute:", ""]
        lines += [
            f"- {c['summary']} (b = {fmt(c['b_small'])} for {c['small']}, {fmt(c['b_large'])} for {c['large']})"
            for c in data["comparisons"]
        ]
    return lines


def _prediction_lines(data: dict[str, Any], analysis: dict[str, Any]) -> list[str]:
    pred = data["prediction"]
    note = " (default: 4× the largest measured compute)" if analysis.get("predict_at_default") else ""
    lines = [
        f"### Prediction at {fmt(pred['compute_flops'])} FLOPs{note}",
        "",
        "**This is a prediction, not a measurement.** Each size's chosen fit, extrapolated; the interval is the "
        "95 % bootstrap interval of the fitted curve (a single run scatters further by the seed noise).",
        "",
    ]
    lines += _table(
        ["size", f"predicted {data['metric']}", "95 % interval", "× beyond largest budget"],
        [[s, fmt(p["value"]), _ci(p["lo"], p["hi"]), fmt(p["extrapolation"], 2)] for s, p in pred["per_size"].items()],
    )
    lines += ["", f"Best size predicted at this compute: **{pred['best_size']}**."]
    return lines
