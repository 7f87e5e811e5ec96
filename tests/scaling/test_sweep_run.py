"""A 2x2 sweep (sizes w8/w16 x budgets 128/512 images, evaluated along one run per size) through the real
launcher: killed with SIGKILL in the middle of its second run, after that run's first point was measured, and
re-run, it skips the finished run, resumes the interrupted one from its checkpoint without measuring any point
twice, and reports (table, fits, plots). Separate-mode plans are checked in test_sweep.py, their points in
test_collect.py; the runner and the collection do not depend on the mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ect_scale.scaling.collect import run_state
from ect_scale.scaling.plan import load_plan
from ect_scale.scaling.points import read_table
from tests.conftest import REPO, load_script
from tests.launchers.common import ENV
from tests.scaling.sweeps import write_sweep

pytestmark = pytest.mark.slow


def _launches(run_dir: str) -> int:
    with open(os.path.join(run_dir, "train.log")) as f:
        return sum(line.startswith("=== ") for line in f)


def _evaluations(run_dir: str) -> list[float]:
    """kimg of every evaluation row in stats.jsonl, repeats included."""
    with open(os.path.join(run_dir, "stats.jsonl")) as f:
        return [float(line.split('"kimg": ', 1)[1].split(",", 1)[0]) for line in f if "FD_classifier/" in line]


def _kill_when(proc: subprocess.Popen, path: str, timeout_s: float = 240) -> None:
    """SIGKILL the sweep's whole process group (sweep, launcher, trainer) once `path` exists."""
    deadline = time.time() + timeout_s
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "the sweep never got there"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sweep_survives_sigkill_and_reports(tmp_path, capsys, monkeypatch):
    path = write_sweep(str(tmp_path), mode="along", budgets_nimg=[128, 512])
    plan = load_plan(path)
    first, last = plan.runs  # w8 and w16, 512 images each (8 steps, a checkpoint every step), evaluated at 128.
    cmd = [sys.executable, os.path.join(REPO, "tools", "scaling.py"), path, "run"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    _kill_when(proc, os.path.join(last.run_dir, "checkpoints", "ckpt-000000000192", "COMPLETE"))
    before = [run_state(plan, r) for r in plan.runs]
    assert [s.status for s in before] == ["done", "partial"], [s.reason for s in before]
    assert sorted(before[1].records) == [128]  # Its first point was measured before the kill.
    stats = open(os.path.join(first.run_dir, "stats.jsonl")).read()

    for key, value in ENV.items():  # The same command again (run, then report), in this process this time.
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)
    code = load_script("tools/scaling.py").main([path])
    out = "".join(capsys.readouterr())
    assert code == 0, out[-3000:]
    assert f"{first.label()}: done, skipped" in out and _launches(first.run_dir) == 1
    assert open(os.path.join(first.run_dir, "stats.jsonl")).read() == stats  # Not touched.
    resumed = before[1].checkpoint_nimg
    assert resumed >= 192 and f"{last.label()}: training resuming at {resumed:,} img" in out
    assert _launches(last.run_dir) == 2
    with open(os.path.join(last.run_dir, "train.log")) as f:
        assert f"start      resumed at {resumed:,} images" in f.read()
    assert _evaluations(last.run_dir) == [0.128, 0.512]  # No point measured twice.
    assert run_state(plan, last).status == "done"

    report = os.path.join(plan.sweep.out_dir, "report")
    points = {(p.size, p.budget_nimg): p for p in read_table(os.path.join(report, "points.csv"))}
    assert sorted(points) == [("w16", 128), ("w16", 512), ("w8", 128), ("w8", 512)]
    assert all(p.status == "ok" and set(p.metrics) == set(plan.metrics) for p in points.values())
    for size in ("w8", "w16"):
        assert points[(size, 512)].compute_flops == pytest.approx(4 * points[(size, 128)].compute_flops)
        assert points[(size, 128)].gpu_hours < points[(size, 512)].gpu_hours
    assert points[("w16", 128)].compute_flops > points[("w8", 128)].compute_flops
    for name in ("fits.json", "report.md", "fd_classifier_1step.png", "fd_classifier_2step.png", "sweep.md"):
        assert os.path.getsize(os.path.join(report, name)) > 0, name
    with open(os.path.join(report, "sweep.md")) as f:
        assert "Runs: 2 done (of 2)" in f.read()
