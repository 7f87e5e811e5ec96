"""Log-log plot of one metric of a scaling analysis against training compute (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ect_scale.scaling.fit import curve

MARKERS = "osD^v<>ph*"
MAX_LISTED = 6  # Points left out that the figure names; more are counted.
STAGGER = 1.06  # Predictions of successive sizes are drawn at target × STAGGER**i.


def _fit_curve(fit: dict[str, Any], compute_flops: np.ndarray) -> np.ndarray:
    p = fit["params"]
    return curve(p["a_ref"], p["b"], p["e"], p["c_ref_flops"], compute_flops)


def plot_metric(data: dict[str, Any], out_path: str) -> str:
    """Draw `data` (one metric of `analyse(...)["metrics"]`) into a PNG at `out_path` and return the path.

    One colour per size; measured points with one marker shape per seed; the chosen fit as a solid line over the
    measured range and dashed up to the prediction compute; the prediction with its interval (a star with an
    error bar, "predicted" in the legend; successive sizes are nudged right by 6 % so the bars stay apart); the
    frontier as a thick grey line. Missing and failed points are not drawn; they are listed under the axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    front = data["frontier"]
    fx = [c for c, v in zip(front["grid_flops"], front["values"], strict=True) if v is not None]
    fy = [v for v in front["values"] if v is not None]
    ax.plot(fx, fy, color="0.6", linewidth=6, alpha=0.5, label="frontier (lowest fitted)", zorder=1)
    target = data["prediction"]["compute_flops"]
    seeds = sorted({pt["seed"] for d in data["sizes"].values() for pt in d["points"]})
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(1, len(data["sizes"]))))
    for i, (colour, (size, d)) in enumerate(zip(colours, data["sizes"].items(), strict=True)):
        _draw_size(ax, size, d, colour, seeds, target, target * STAGGER**i)
    ax.errorbar(
        [],
        [],
        yerr=[],
        color="k",
        marker="*",
        linestyle="none",
        capsize=4,
        label=f"predicted at {target:.3g} FLOPs (95 % interval)",
    )
    for i, s in enumerate(seeds[: len(MARKERS)]):
        ax.scatter([], [], marker=MARKERS[i], color="k", label=f"seed {s}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel(data["metric"])
    ax.set_title(f"{data['metric']} against training compute (solid: fit; dashed: extrapolation)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    left_out = _left_out(data)
    if left_out:
        fig.text(0.01, 0.01, left_out, fontsize=7, va="bottom", wrap=True)
        fig.subplots_adjust(bottom=0.2)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def _draw_size(
    ax: Any, size: str, d: dict[str, Any], colour: Any, seeds: list[int], target: float, x_pred: float
) -> None:
    """One size: its points, its chosen fit (solid, then dashed to `target`) and its prediction at `target`, drawn
    at `x_pred` (staggered a little per size so error bars do not hide each other)."""
    for pt in d["points"]:
        marker = MARKERS[seeds.index(pt["seed"]) % len(MARKERS)]
        ax.scatter(pt["compute_flops"], pt["value"], marker=marker, color=colour, zorder=3, s=25)
    if not d["fitted"]:
        ax.scatter([], [], marker="o", color=colour, label=f"{size} (not fitted)")
        return
    fit = d["fits"][d["chosen"]]
    lo, hi = fit["compute_range_flops"]
    xs = np.logspace(np.log10(lo), np.log10(hi), 100)
    ax.plot(
        xs,
        _fit_curve(fit, xs),
        color=colour,
        linewidth=1.8,
        zorder=2,
        label=f"{size} ({d['params']:.3g} params): {d['chosen']}, b = {fit['params']['b']:.3g}",
    )
    pred = d["prediction"]
    if target > hi:
        xe = np.logspace(np.log10(hi), np.log10(target), 50)
        ax.plot(xe, _fit_curve(fit, xe), color=colour, linewidth=1.5, linestyle="--", zorder=2)
    if pred["lo"] is not None and np.isfinite(pred["lo"]):
        err = [[pred["value"] - pred["lo"]], [pred["hi"] - pred["value"]]]
        ax.errorbar([x_pred], [pred["value"]], yerr=err, color=colour, marker="*", markersize=10, capsize=4, zorder=4)
    else:
        ax.scatter([x_pred], [pred["value"]], color=colour, marker="*", s=100, zorder=4)


def _left_out(data: dict[str, Any]) -> str:
    """'Not drawn: ...' naming the excluded points (missing, failed, without the metric) and unfitted sizes."""
    items = [
        f"{s} seed {e['seed']} budget {e['budget_nimg']} ({e['reason']})"
        for s, d in data["sizes"].items()
        for e in d["excluded"]
    ]
    text = ""
    if items:
        more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
        text = "Not drawn: " + "; ".join(items[:MAX_LISTED]) + more + "."
    if data["not_fitted"]:
        text += " Not fitted: " + "; ".join(f"{s}: {why}" for s, why in data["not_fitted"].items()) + "."
    return text.strip()
