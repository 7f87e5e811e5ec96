"""Fits of y against compute: recovery of known curves, bootstrap CIs, model choice, held-out checks, the table."""

from __future__ import annotations

import ast
import math
import os
import sys

import numpy as np
import pytest

from ect_scale.runtime.errors import UserError
from ect_scale.scaling import fit as fit_mod
from ect_scale.scaling.fit import fit_points, fit_power_law, predict
from ect_scale.scaling.holdout import holdout_largest, seed_noise, select_form, select_form_arrays
from ect_scale.scaling.points import Point, read_table, split_usable, write_table
from tests.conftest import REPO
from tests.scaling import synth

PURE = (300.0, 0.35, 0.0)  # (a at 1e17 FLOPs, b, e)
FLOOR = (200.0, 0.5, 10.0)


def test_pure_power_law_is_recovered_with_a_ci_that_holds_the_truth_and_excludes_wrong_exponents():
    c, y = synth.arrays(*PURE, noise=0.03)
    fit = fit_power_law(c, y, form="pure", n_boot=300, seed=1)
    lo, hi = fit.ci("b")
    assert lo <= PURE[1] <= hi
    assert not lo <= PURE[1] + 0.05 <= hi and not lo <= PURE[1] - 0.05 <= hi
    assert fit.b == pytest.approx(PURE[1], abs=0.02)
    assert fit.a == pytest.approx(PURE[0] * 1e17 ** PURE[1], rel=0.15)  # a in FLOPs units
    assert fit.ci("a")[0] <= PURE[0] * 1e17 ** PURE[1] <= fit.ci("a")[1]
    assert fit.r2_log > 0.99 and fit.rmse_log == pytest.approx(0.03, abs=0.015)
    assert fit.n_points == 21 and fit.n_budgets == 7 and len(fit.boot) == 300 and fit.warnings == []


def test_floor_form_recovers_floor_and_exponent_and_held_out_selection_picks_it():
    c, y = synth.arrays(*FLOOR, noise=0.02, n_budgets=8, n_seeds=4)
    fit = fit_power_law(c, y, form="floor", n_boot=200, seed=0)
    (b_lo, b_hi), (e_lo, e_hi) = fit.ci("b"), fit.ci("e")
    assert b_lo <= FLOOR[1] <= b_hi and e_lo <= FLOOR[2] <= e_hi
    assert e_lo > 5.0  # The floor is detected: its CI is far from 0.
    assert fit.b == pytest.approx(FLOOR[1], abs=0.05) and fit.e == pytest.approx(FLOOR[2], rel=0.15)
    selection = select_form_arrays(c, y)
    assert selection.chosen == "floor"
    assert selection.errors_log["floor"] < 0.5 * selection.errors_log["pure"]
    assert select_form_arrays(c, y, method="last").chosen == "floor"


def test_pure_data_selects_the_pure_form_or_ties():
    c, y = synth.arrays(*PURE, noise=0.03, seed=3)
    selection = select_form_arrays(c, y)
    errors = selection.errors_log
    assert selection.chosen == "pure" or errors["floor"] >= 0.9 * errors["pure"]
    assert "pure" in selection.reason and "floor" in selection.reason


def test_floor_needs_four_budgets_to_be_chosen_and_says_why():
    c, y = synth.arrays(*FLOOR, n_budgets=3)
    selection = select_form_arrays(c, y)
    assert selection.chosen == "pure" and selection.errors_log["floor"] is None
    assert "at least 4" in selection.reason
    c2, y2 = synth.arrays(*FLOOR, n_budgets=2)
    assert select_form_arrays(c2, y2).errors_log == {"pure": None, "floor": None}


def test_bootstrap_is_reproducible_with_a_seed():
    c, y = synth.arrays(*FLOOR, n_budgets=5, n_seeds=2)
    first, again = (fit_power_law(c, y, form="floor", n_boot=40, seed=7) for _ in range(2))
    np.testing.assert_array_equal(first.boot, again.boot)
    other = fit_power_law(c, y, form="floor", n_boot=40, seed=8)
    assert not np.array_equal(first.boot, other.boot)


@pytest.mark.parametrize("truth,form", [(PURE, "pure"), (FLOOR, "floor")])
def test_prediction_interval_contains_the_truth_at_four_times_the_largest_compute(truth, form):
    c, y = synth.arrays(*truth, noise=0.005)
    fit = fit_power_law(c, y, form=form, n_boot=200, seed=0)
    target = 4.0 * c.max()
    pred = predict(fit, target)
    true_value = float(synth.curve(target, *truth))
    assert pred.lo <= true_value <= pred.hi
    assert not pred.lo <= 1.1 * true_value <= pred.hi  # The interval is informative, not just wide.
    assert pred.extrapolation == pytest.approx(4.0) and pred.n_boot == 200


def test_degenerate_resamples_are_skipped_and_counted():
    fit = fit_power_law([1e17, 1e18], [100.0, 50.0], n_boot=200, seed=0)
    assert 50 < len(fit.boot) < 150  # About half of the resamples draw one budget twice.
    assert fit.n_boot_requested == 200 and fit.to_dict()["n_boot_used"] == len(fit.boot)
    assert any("resamples" in w for w in fit.warnings) and any("2 budgets for 2 parameters" in w for w in fit.warnings)


def test_poor_fits_carry_plain_warnings():
    c = np.repeat(np.logspace(17, 20, 6), 3)
    fit = fit_power_law(c, np.tile([45.0, 50.0, 55.0], 6), n_boot=100, seed=0)  # No trend at all.
    text = " ".join(fit.warnings)
    assert "includes 0" in text and "R² (log space)" in text


def test_too_few_budgets_is_a_user_error_naming_the_size():
    with pytest.raises(UserError, match=r"has 1 finished budget; a pure power-law fit needs at least 2\. Fix: "):
        fit_power_law([1e18, 1e18], [10.0, 11.0])
    with pytest.raises(UserError, match="floor power-law fit needs at least 3"):
        fit_power_law([1e17, 1e18], [10.0, 5.0], form="floor")
    pts = synth.points("w16", 10**7, {"fd": PURE}, n_budgets=1)
    with pytest.raises(UserError, match="size w16, fd has 1 finished budget"):
        fit_points(pts, "fd")


def test_seed_noise_pools_relative_and_log_std_over_budgets_with_several_seeds():
    noise = seed_noise([1e17] * 3 + [1e18] * 3 + [1e19], [9.0, 10.0, 11.0, 18.0, 20.0, 22.0, 5.0])
    assert noise.pooled_rel_std == pytest.approx(0.1) and noise.dof == 4
    assert noise.pooled_log_std == pytest.approx(0.1, abs=0.005)
    assert [row["n"] for row in noise.per_budget] == [3, 3, 1] and math.isnan(noise.per_budget[2]["std"])
    assert seed_noise([1e17, 1e18], [3.0, 2.0]).pooled_rel_std is None


def test_holdout_largest_predicts_the_largest_budget_and_the_right_form_predicts_better():
    pts = synth.points("w16", 10**7, {"pure": PURE, "floor": FLOOR}, n_budgets=6, noise=0.01)
    hold = holdout_largest(pts, "pure", "pure", n_boot=100)
    largest = [p.metrics["pure"] for p in pts if p.compute_flops == max(q.compute_flops for q in pts)]
    assert hold.measured == pytest.approx(math.exp(np.mean(np.log(largest))))
    assert abs(hold.rel_error) < 0.03 and hold.n_fit_budgets == 5 and hold.compute_flops == pytest.approx(1e20)
    wrong, right = (holdout_largest(pts, "floor", form, n_boot=0) for form in ("pure", "floor"))
    assert abs(right.rel_error) < 0.05 < abs(wrong.rel_error)
    noise = seed_noise([p.compute_flops for p in pts], [p.metrics["floor"] for p in pts])
    warned = holdout_largest(pts, "floor", "pure", n_boot=0, noise_log_std=noise.pooled_log_std)
    assert any("seed-to-seed noise" in w for w in warned.warnings)
    assert select_form(pts, "floor", noise_log_std=noise.pooled_log_std).chosen == "floor"


def test_missing_and_failed_points_are_kept_in_the_table_with_their_reason_and_left_out_of_fits(tmp_path):
    pts = synth.points("w16", 10**7, {"fd_1step": PURE}, n_budgets=3, seeds=(0,))
    pts.append(Point("w16", 10**7, 5, 10**9, 1e20, metrics={"fd_1step": 1e6}, status="failed", reason="diverged"))
    pts.append(Point("w16", 10**7, 6, 10**9, 1e20, status="missing", reason="eval not run"))
    pts.append(Point("w32", 4 * 10**7, 0, 10**8, 1e18, metrics={"fd_2step": 12.5}))
    write_table(pts, str(tmp_path / "t.csv"), str(tmp_path / "t.json"))
    for name in ("t.csv", "t.json"):
        back = read_table(str(tmp_path / name))
        assert [(p.status, p.reason, p.metrics) for p in back] == [(p.status, p.reason, p.metrics) for p in pts]
        assert back[0].compute_flops == pts[0].compute_flops and back[0].gpu_hours == pts[0].gpu_hours
        assert math.isnan(back[-1].gpu_hours)
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0].endswith(",fd_1step,fd_2step") and rows[-2].endswith(",missing,eval not run,,,")
    used, excluded = split_usable(pts, "fd_1step")
    assert len(used) == 3 and [why for _, why in excluded] == [
        "failed: diverged",
        "missing: eval not run",
        "no fd_1step value",
    ]
    clean = fit_points(pts[:3], "fd_1step", n_boot=0)
    with_bad = fit_points(pts[:5], "fd_1step", n_boot=0)
    assert with_bad.b == clean.b and with_bad.n_points == 3


def test_bad_points_are_user_errors():
    with pytest.raises(UserError, match="failed without a reason. Fix: "):
        Point("w16", 1, 0, 1, 1e17, status="failed")
    with pytest.raises(UserError, match="status 'done'"):
        Point("w16", 1, 0, 1, 1e17, status="done")
    with pytest.raises(UserError, match=r"fd = 0\.0; a power-law fit needs positive values\. Fix: "):
        split_usable([Point("w16", 1, 0, 1, 1e17, metrics={"fd": 0.0})], "fd")
    with pytest.raises(UserError, match="compute_flops = -1.0"):
        split_usable([Point("w16", 1, 0, 1, -1.0, metrics={"fd": 3.0})], "fd")


def test_the_fit_modules_import_only_numpy_scipy_matplotlib_and_errors():
    """The fits stay usable without torch; the sweep modules (sweep, plan, runner, collect, slurm, study) use the
    package's config, trainer records and checkpoints."""
    folder = os.path.join(REPO, "ect_scale", "scaling")
    allowed = ("numpy", "scipy", "matplotlib", "ect_scale.runtime.errors", "ect_scale.scaling", "__future__")
    fit_modules = ("points", "fit", "holdout", "frontier", "report", "markdown", "plot")
    for name in os.listdir(folder):
        if name.endswith(".py") and name[:-3] in fit_modules:
            tree = ast.parse(open(os.path.join(folder, name)).read())
            for node in ast.walk(tree):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                )
                for mod in names:
                    top = mod.split(".")[0]
                    assert top not in ("torch", "deepspeed"), (name, mod)
                    assert mod.startswith(allowed) or top in sys.stdlib_module_names, (name, mod)
    assert fit_mod.FORMS == ("pure", "floor")
