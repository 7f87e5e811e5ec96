"""Across sizes (frontier, crossings) and the whole report: analyse() and write_report() end to end."""

from __future__ import annotations

import json

import pytest

from ect_scale.runtime.errors import UserError
from ect_scale.scaling.fit import fit_power_law
from ect_scale.scaling.frontier import best_size_for, compare_sizes, crossings, frontier, measured_envelope
from ect_scale.scaling.points import Point
from ect_scale.scaling.report import analyse, write_report
from tests.scaling import synth

# y = a·(C/1e17)^(−b): the small size starts lower, the large one falls faster; they cross where
# 1000·x^(−0.3) = 3000·x^(−0.5), x^0.2 = 3, x = 243: at C = 2.43e19 FLOPs.
SMALL, LARGE, CROSS_FLOPS = (1000.0, 0.3, 0.0), (3000.0, 0.5, 0.0), 2.43e19


def _fits(lo_flops=1e17, hi_flops=1e21):
    return {
        name: fit_power_law(*synth.arrays(*truth, lo_flops=lo_flops, hi_flops=hi_flops, noise=0.005, seed=i), n_boot=0)
        for i, (name, truth) in enumerate([("w8", SMALL), ("w32", LARGE)])
    }


def test_best_size_is_the_right_one_on_each_side_of_a_crossing():
    fits = _fits()
    assert best_size_for(fits, 1e18) == "w8" and best_size_for(fits, 1e20) == "w32"
    assert best_size_for(fits, CROSS_FLOPS / 1.5) == "w8" and best_size_for(fits, CROSS_FLOPS * 1.5) == "w32"
    (found,) = crossings(fits["w8"], fits["w32"], 1e17, 1e21)
    assert found == pytest.approx(CROSS_FLOPS, rel=0.1)
    segments = frontier(fits).segments()
    assert [s["size"] for s in segments] == ["w8", "w32"]
    assert segments[0]["to_flops"] < CROSS_FLOPS * 1.1 and segments[1]["from_flops"] > CROSS_FLOPS / 1.1
    (pair,) = compare_sizes(fits, {"w8": 10**7, "w32": 10**8})
    assert pair["small"] == "w8" and pair["crossings"][0]["measured"]
    assert 0.3 < pair["large_lower_fraction"] < 0.7 and "w32 is lower above 2.4" in pair["summary"]


def test_sizes_compete_only_within_their_measured_range_unless_extrapolating():
    fits = _fits(hi_flops=1e19)  # Both measured up to 1e19 only: the crossing at 2.43e19 is an extrapolation.
    assert best_size_for(fits, 1e20) is None and best_size_for(fits, 1e20, extrapolate=True) == "w32"
    assert not compare_sizes(fits, {"w8": 1, "w32": 2})[0]["crossings"]
    assert frontier(fits).segments() == [{"size": "w8", "from_flops": 1e17, "to_flops": pytest.approx(1e19)}]


def test_measured_envelope_keeps_points_lower_than_everything_at_less_compute():
    pts = [
        Point("w8", 1, 0, 1, 1e17, metrics={"fd": 50.0}),
        Point("w8", 1, 0, 2, 1e18, metrics={"fd": 30.0}),
        Point("w32", 4, 0, 1, 4e17, metrics={"fd": 60.0}),
        Point("w32", 4, 0, 2, 4e18, metrics={"fd": 20.0}),
        Point("w32", 4, 1, 2, 4e18, metrics={"fd": 20.0}),
        Point("w32", 4, 0, 3, 1e19, status="failed", reason="x"),
    ]
    assert [(r["size"], r["compute_flops"]) for r in measured_envelope(pts, "fd")] == [
        ("w8", 1e17),
        ("w8", 1e18),
        ("w32", 4e18),
    ]


def _study() -> list[Point]:
    metrics = {"fd_1step": (400.0, 0.35, 8.0), "fd_2step": (150.0, 0.4, 0.0)}
    pts = synth.points("w8", 10**7, metrics, 1e17, 1e19, n_budgets=4, seeds=(0, 1), seed=1)
    pts += synth.points(
        "w16",
        4 * 10**7,
        {m: (1.5 * a, b + 0.05, e) for m, (a, b, e) in metrics.items()},
        4e17,
        4e19,
        n_budgets=4,
        seeds=(0, 1),
        seed=2,
    )
    pts += synth.points("w32", 16 * 10**7, metrics, 1e19, 1e19, n_budgets=1, seeds=(0,), seed=3)  # One budget.
    pts.append(Point("w16", 4 * 10**7, 2, 10**9, 4e19, status="failed", reason="NaN loss at 3M images"))
    return pts


def test_report_end_to_end_writes_json_markdown_and_plots(tmp_path):
    analysis = analyse(_study(), metrics=["fd_1step", "fd_2step"], n_boot=30, seed=0)
    paths = write_report(analysis, str(tmp_path))
    assert sorted(paths) == ["fd_1step.png", "fd_2step.png", "fits.json", "report.md"]
    for name in ("fd_1step.png", "fd_2step.png"):
        data = (tmp_path / name).read_bytes()
        assert len(data) > 10_000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    fits = json.loads((tmp_path / "fits.json").read_text())
    one = fits["metrics"]["fd_1step"]
    assert one["not_fitted"] == {"w32": "size w32 has 1 finished budget with fd_1step; a fit needs at least 2"}
    assert one["sizes"]["w8"]["fitted"] and one["sizes"]["w8"]["chosen"] in ("pure", "floor")
    assert one["sizes"]["w16"]["excluded"][0]["reason"] == "failed: NaN loss at 3M images"
    assert one["sizes"]["w16"]["holdout_largest"]["n_fit_budgets"] == 3
    assert one["prediction"]["compute_flops"] == pytest.approx(1.6e20) and fits["predict_at_default"]
    assert set(one["prediction"]["per_size"]) == {"w8", "w16"}
    assert [p["status"] for p in fits["table"]].count("failed") == 1
    report = (tmp_path / "report.md").read_text()
    for text in (
        "## fd_1step",
        "## fd_2step",
        "exponent b [95 % CI]",
        "Not fitted: **w32**",
        "This is a prediction",
        "NaN loss at 3M images",
        "![fd_1step against training compute](fd_1step.png)",
        "best size",
    ):
        assert text in report, text


def test_prediction_compute_can_be_chosen_and_is_where_the_plot_and_report_predict(tmp_path):
    analysis = analyse(_study(), metrics=["fd_2step"], predict_at_flops=1e21, n_boot=20)
    pred = analysis["metrics"]["fd_2step"]["prediction"]
    assert pred["compute_flops"] == 1e21 and not analysis["predict_at_default"]
    assert all(p["lo"] <= p["value"] <= p["hi"] and p["extrapolation"] > 20 for p in pred["per_size"].values())
    write_report(analysis, str(tmp_path), plots=False)
    assert "### Prediction at 1e+21 FLOPs\n" in (tmp_path / "report.md").read_text()


def test_bad_input_is_one_user_error_naming_what_and_how_to_fix():
    with pytest.raises(UserError, match="no size can be fitted for fd .*w16: size w16 has 1 finished budget"):
        analyse(synth.points("w16", 10, {"fd": (10.0, 0.3, 0.0)}, n_budgets=1), n_boot=0)
    with pytest.raises(UserError, match=r"fd = -3\.0; a power-law fit needs positive values\. Fix: "):
        analyse([Point("w16", 10, 0, 1, 1e17, metrics={"fd": -3.0})])
    with pytest.raises(UserError, match="metric 'fid' appears in no finished"):
        analyse(_study(), metrics=["fid"])
    with pytest.raises(UserError, match="the points table is empty"):
        analyse([])
    with pytest.raises(UserError, match="different parameter counts"):
        analyse([Point("w16", 10, 0, 1, 1e17, metrics={"fd": 3.0}), Point("w16", 11, 0, 2, 1e18, metrics={"fd": 2.0})])
