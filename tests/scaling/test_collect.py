"""Collecting points from run folders: finished, interrupted, failed and never-started runs, non-finite metrics,
duplicated and torn stats.jsonl lines; missing and failed points keep their reason and are never fitted as 0."""

from __future__ import annotations

import math
import os

import pytest

from ect_scale.runtime.errors import UserError
from ect_scale.scaling.collect import collect_points, record_attempt, run_state
from ect_scale.scaling.plan import build_plan
from ect_scale.scaling.points import read_table
from ect_scale.scaling.study import report_sweep
from ect_scale.scaling.sweep import load_sweep
from tests.scaling.sweeps import fake_run, record, write_sweep

pytestmark = pytest.mark.slow  # Parameter counts and FLOPs of the points come from the networks' FLOP count.


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    plan = build_plan(load_sweep(write_sweep(str(tmp_path_factory.mktemp("collect")), teachers=False)))
    _fill(plan)
    return plan


def _fill(plan):
    """w8: both runs done (the small one logged its record twice: once before an interruption, once after);
    w16: the small run failed, the large one was interrupted at 512 of 1024 images after an evaluation at 256
    whose 2-step FD is NaN."""
    w8_small, w8_large, w16_small, w16_large = (r.run_dir for r in plan.runs)
    fake_run(w8_small, {256: record(90.0, 30.0, 256)}, done_nimg=256, logged_nimg=256)
    fake_run(w8_small, {256: record(80.0, 20.0, 256)}, torn=True)  # The later record wins; the torn line is skipped.
    fake_run(w8_large, {256: record(85.0, 25.0, 256), 1024: record(40.0, 12.0, 1024)}, done_nimg=1024)
    fake_run(w16_small, {}, logged_nimg=128)
    record_attempt(w16_small, {"exit_code": 2, "error": "error: diverged. Fix: lower optim.lr"})
    fake_run(w16_large, {256: record(70.0, math.nan, 256)}, done_nimg=0, logged_nimg=512)
    os.makedirs(os.path.join(w16_large, "checkpoints", "ckpt-000000000448"))  # No COMPLETE marker: not used.
    os.makedirs(os.path.join(w16_large, "checkpoints", "ckpt-000000000384"))
    with open(os.path.join(w16_large, "checkpoints", "ckpt-000000000384", "COMPLETE"), "w") as f:
        f.write("{}")


def test_run_states_and_points_keep_their_reasons(plan):
    states = [run_state(plan, r) for r in plan.runs]
    assert [s.status for s in states] == ["done", "done", "failed", "partial"]
    assert states[2].reason == "run failed at 128 of 256 images: error: diverged. Fix: lower optim.lr"
    assert states[3].checkpoint_nimg == 384 and "stopped at 512 of 1,024 images (checkpoint at 384)" in states[3].reason
    sep = {(p.size, p.budget_nimg): p for p in collect_points(plan, "separate")}
    ok = sep[("w8", 256)]
    assert ok.status == "ok" and ok.metrics == {"fd_classifier_1step": 80.0, "fd_classifier_2step": 20.0}
    assert ok.compute_flops == 4.0e7 * 256 and ok.gpu_hours == pytest.approx(256 / 3.6e6)
    assert ok.params == plan.runs[0].params < plan.runs[2].params == sep[("w16", 256)].params
    assert sep[("w8", 1024)].status == "ok" and sep[("w8", 1024)].metrics["fd_classifier_2step"] == 12.0
    assert sep[("w16", 256)].status == "failed" and "diverged" in sep[("w16", 256)].reason
    stopped = sep[("w16", 1024)]
    assert stopped.status == "missing" and "stopped at 512" in stopped.reason and not stopped.metrics
    assert stopped.compute_flops > 0  # The nominal compute of the budget, for the table.
    along = {(p.size, p.budget_nimg): p for p in collect_points(plan, "along")}
    assert along[("w8", 256)].metrics["fd_classifier_1step"] == 85.0  # The large run's record, not the small one's.
    nan = along[("w16", 256)]
    assert nan.status == "failed" and "fd_classifier_2step is nan at 256 images" in nan.reason
    assert along[("w16", 1024)].status == "missing"


def test_report_lists_missing_points_and_exits_2_unless_partial(plan, tmp_path):
    out = str(tmp_path / "report")
    with pytest.raises(UserError) as err:
        report_sweep(plan, out)
    assert str(err.value).startswith("4 of 8 points are missing or failed") and "--partial" in str(err.value)
    table = {(p.size, p.budget_nimg): p for p in read_table(os.path.join(out, "along", "points.csv"))}
    assert table[("w16", 1024)].status == "missing" and not table[("w16", 1024)].metrics  # An empty cell, not 0.
    with open(os.path.join(out, "along", "points.csv")) as f:
        assert ',missing,"stopped at 512 of 1,024 images' in f.read()
    with open(os.path.join(out, "sweep.md")) as f:
        text = f.read()
    assert "| along | w16 seed 0 budget 1024 img | missing | stopped at 512" in text
    summary = report_sweep(plan, out, partial=True)
    exponents = summary["modes"]["along"]["exponents"]["fd_classifier_1step"]
    assert exponents["w8"]["b"] > 0 and "w16" not in exponents  # 85 -> 40: falling; w16 has no 2 budgets.
    with open(os.path.join(out, "along", "report.md")) as f:
        assert "Not fitted: **w16**" in f.read()
