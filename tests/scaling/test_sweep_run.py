"""A 2x2 sweep (sizes w8/w16 x budgets 256/1024 images, mode both) through the real launcher: killed with SIGKILL in
the middle of its last run, re-run, it skips the finished runs, resumes the interrupted one from its checkpoint,
and reports both modes (table, fits, plots)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ect_scale.scaling.collect import read_stats, run_state
from ect_scale.scaling.plan import build_plan
from ect_scale.scaling.points import read_table
from ect_scale.scaling.sweep import load_sweep
from tests.conftest import REPO
from tests.launchers.common import ENV
from tests.scaling.sweeps import write_sweep

pytestmark = pytest.mark.slow


def _launches(run_dir: str) -> int:
    with open(os.path.join(run_dir, "train.log")) as f:
        return sum(line.startswith("=== ") for line in f)


def _kill_when(proc: subprocess.Popen, path: str, timeout_s: float = 240) -> None:
    """SIGKILL the sweep's whole process group (sweep, launcher, trainer) once `path` exists."""
    deadline = time.time() + timeout_s
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "the sweep never got there"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sweep_survives_sigkill_and_reports(tmp_path):
    path = write_sweep(str(tmp_path))
    plan = build_plan(load_sweep(path))
    last = plan.runs[-1]  # w16, 1024 images: 16 steps, a checkpoint every step.
    cmd = [sys.executable, os.path.join(REPO, "tools", "scaling.py"), path, "run"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    _kill_when(proc, os.path.join(last.run_dir, "checkpoints", "ckpt-000000000128", "COMPLETE"))
    states = [run_state(plan, r) for r in plan.runs]
    assert [s.status for s in states] == ["done", "done", "done", "partial"], [s.reason for s in states]
    stats = {r.index: open(os.path.join(r.run_dir, "stats.jsonl")).read() for r in plan.runs[:3]}

    proc = subprocess.run(cmd[:-1], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)  # run + report
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for run in plan.runs[:3]:  # Finished runs: skipped, not launched again, their records untouched.
        assert f"{run.label()}: done, skipped" in out
        assert _launches(run.run_dir) == 1
        assert open(os.path.join(run.run_dir, "stats.jsonl")).read() == stats[run.index]
    resumed = states[3].checkpoint_nimg
    assert resumed >= 128 and f"{last.label()}: training resuming at {resumed:,} img" in out
    assert _launches(last.run_dir) == 2
    with open(os.path.join(last.run_dir, "train.log")) as f:
        assert f"start      resumed at {resumed:,} images" in f.read()
    assert run_state(plan, last).status == "done"

    report = os.path.join(plan.sweep.out_dir, "report")
    separate = {(p.size, p.budget_nimg): p for p in read_table(os.path.join(report, "separate", "points.csv"))}
    along = {(p.size, p.budget_nimg): p for p in read_table(os.path.join(report, "along", "points.csv"))}
    assert len(separate) == len(along) == 4 and all(p.status == "ok" for p in [*separate.values(), *along.values()])
    for size in ("w8", "w16"):
        # The largest budget is the same run in both modes; the smaller one is another run in each.
        assert along[(size, 1024)].metrics == separate[(size, 1024)].metrics
        assert along[(size, 256)].run_dir == along[(size, 1024)].run_dir != separate[(size, 256)].run_dir
        assert separate[(size, 1024)].compute_flops == pytest.approx(4 * separate[(size, 256)].compute_flops)
    assert separate[("w16", 256)].compute_flops > separate[("w8", 256)].compute_flops
    records, _ = read_stats(last.run_dir, ("FD_classifier/",))
    assert sorted(records) == [256, 1024]  # Evaluated where eval.at_nimg says, once each after the resume.
    for mode in ("separate", "along"):
        for name in ("fits.json", "report.md", "fd_classifier_1step.png", "fd_classifier_2step.png"):
            assert os.path.getsize(os.path.join(report, mode, name)) > 0, (mode, name)
    with open(os.path.join(report, "sweep.md")) as f:
        text = f.read()
    assert "4 done (of 4)" in text and "modes.md" in text
    assert "| w8 | 256 |" in open(os.path.join(report, "modes.md")).read()
