"""Reading a sweep's run folders: how far each run got, and its points (`scaling.points.Point`) for the table.

A run folder is an ordinary one (`launchers/train.py` wrote it). What a point needs is in `stats.jsonl`: the
in-loop evaluation record at its budget, which carries the metrics of every EMA and the compute spent so far
(`Compute/train_flops`, `Compute/device_hours`, `Compute/wall_hours`, and `Compute/init_*` for the teacher).
`sweep-attempts.jsonl` (written by `scaling.runner`) keeps each launch's exit code and error line.

A run is `done` when it has an evaluation record at each of its budgets and its final checkpoint is complete; a
point without a finite measurement is never dropped or written as 0: it is `missing` (not run yet, stopped early,
no evaluation there) or `failed` (the run exited with an error, or the metric is not finite), with the reason.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from ect_scale.checkpoint.layout import MARKER, tag_for
from ect_scale.checkpoint.storage import Destination
from ect_scale.ect import build_objective
from ect_scale.scaling.plan import Plan, PointRef, Run, network_stats
from ect_scale.scaling.points import Point
from ect_scale.train.compute import flops_per_image

STATS = "stats.jsonl"
ATTEMPTS = "sweep-attempts.jsonl"
STATES = ("done", "partial", "failed", "new", "unmeasured")


@dataclass
class RunState:
    """How far a run got. `status`: done, partial (resumable), failed (last launch exited with an error),
    new (never started) or unmeasured (finished without the evaluations it should have)."""

    status: str
    checkpoint_nimg: int = 0  # Images at its newest complete checkpoint.
    logged_nimg: int = 0  # Images at its newest stats.jsonl row.
    records: dict[int, dict] = field(default_factory=dict)  # nimg -> the last evaluation record there.
    reason: str = ""
    error: Optional[str] = None  # The last launch's error line, if it failed.

    def describe(self, run: Run) -> str:
        if self.status == "done":
            return "done"
        if self.status == "new":
            return "not started"
        return f"{self.status}: {self.reason}"


def read_stats(run_dir: str, metric_prefixes: tuple[str, ...]) -> tuple[dict[int, dict], int]:
    """({nimg: last evaluation record}, newest nimg logged) from `<run_dir>/stats.jsonl`.

    A record is a row with a key starting with one of `metric_prefixes` (e.g. "FD_classifier/"). A resumed run may
    log an evaluation twice (once before an interruption, once after); the later row wins. A torn last line (the
    process was killed while writing) is skipped."""
    path = os.path.join(run_dir, STATS)
    records: dict[int, dict] = {}
    newest = 0
    if not os.path.isfile(path):
        return records, newest
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or "kimg" not in row:
                continue
            nimg = int(round(float(row["kimg"]) * 1000))
            newest = max(newest, nimg)
            if any(k.startswith(metric_prefixes) for k in row):
                records[nimg] = row
    return records, newest


def last_attempt(run_dir: str) -> Optional[dict]:
    """The newest launch record of `<run_dir>/sweep-attempts.jsonl`, or None."""
    path = os.path.join(run_dir, ATTEMPTS)
    if not os.path.isfile(path):
        return None
    out = None
    with open(path) as f:
        for line in f:
            try:
                out = json.loads(line)
            except json.JSONDecodeError:
                continue
    return out


def record_attempt(run_dir: str, attempt: dict) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, ATTEMPTS), "a") as f:
        f.write(json.dumps(attempt) + "\n")


def checkpoint_nimg(run: Run, at_least: Optional[int] = None) -> int:
    """Images at the run's newest complete checkpoint (0 if none). With `at_least`, only that checkpoint is
    looked for (a quick check that a run finished)."""
    dest = Destination(run.cfg.checkpoint.dir or os.path.join(run.run_dir, "checkpoints"))
    if at_least is not None:
        return at_least if dest.fs.exists(dest.path(tag_for(at_least), MARKER)) else 0
    for tag in reversed(dest.tags()):
        if dest.fs.exists(dest.path(tag, MARKER)):
            return int(tag.rsplit("-", 1)[1])
    return 0


def metric_prefixes(plan: Plan) -> tuple[str, ...]:
    return tuple(sorted({key.split("/", 1)[0] + "/" for key in plan.metrics.values()}))


def run_state(plan: Plan, run: Run) -> RunState:
    """How far `run` got (see `RunState`)."""
    records, logged = read_stats(run.run_dir, metric_prefixes(plan))
    attempt = last_attempt(run.run_dir)
    error = None
    if attempt is not None and attempt.get("exit_code") not in (0, None):
        error = attempt.get("error") or f"exit code {attempt.get('exit_code')} (see {attempt.get('log', 'its log')})"
    finished = checkpoint_nimg(run, at_least=run.budget_nimg) == run.budget_nimg
    unmeasured = [n for n in run.eval_nimg if n not in records]
    if finished and not unmeasured:
        return RunState("done", run.budget_nimg, logged, records)
    if finished:
        return RunState(
            "unmeasured",
            run.budget_nimg,
            logged,
            records,
            reason=(
                f"finished without an evaluation at {_list(unmeasured)} images (was it trained with another "
                f"eval.at_nimg?); delete {run.run_dir} and re-run the sweep to measure it"
            ),
        )
    ckpt = checkpoint_nimg(run) if os.path.isdir(run.run_dir) else 0
    if error is not None:
        where = f" at {max(ckpt, logged):,} of {run.budget_nimg:,} images" if max(ckpt, logged) else ""
        return RunState("failed", ckpt, logged, records, reason=f"run failed{where}: {error}", error=error)
    if ckpt or logged or attempt is not None:
        return RunState(
            "partial",
            ckpt,
            logged,
            records,
            reason=(
                f"stopped at {logged:,} of {run.budget_nimg:,} images (checkpoint at {ckpt:,}); re-run the sweep "
                "to resume it"
            ),
        )
    return RunState("new", reason="not run yet")


def _list(nimgs: list[int]) -> str:
    return ", ".join(f"{n:,}" for n in nimgs)


def nominal_flops(run: Run, nimg: int) -> float:
    """Training FLOPs at `nimg` images, counted as the trainer counts them (`train.compute`); NaN if the objective
    runs a network this count does not know."""
    passes = build_objective(run.cfg.ect).flop_passes()
    try:
        return nimg * flops_per_image(passes, {"online": network_stats(run.cfg.network)["fwd_flops"]})
    except ValueError:
        return math.nan


def collect_points(plan: Plan, mode: str, states: Optional[dict[int, RunState]] = None) -> list[Point]:
    """The points of `mode` ("separate" or "along"), one per (size, seed, budget), ok or with their reason."""
    states = states if states is not None else {r.index: run_state(plan, r) for r in plan.runs}
    return [point_of(plan, ref, states[ref.run]) for ref in plan.points[mode]]


def point_of(plan: Plan, ref: PointRef, state: RunState) -> Point:
    run = plan.runs[ref.run]
    common = dict(size=ref.size, params=run.params, seed=ref.seed, budget_nimg=ref.budget_nimg, run_dir=run.run_dir)
    record = state.records.get(ref.budget_nimg)
    if record is None:
        if state.status == "failed":
            status, reason = "failed", state.reason
        elif state.status == "new":
            status, reason = "missing", "not run yet"
        elif state.status in ("done", "unmeasured") or state.logged_nimg >= ref.budget_nimg:
            status, reason = "missing", f"no evaluation at {ref.budget_nimg:,} images in {STATS}"
        else:
            status, reason = "missing", state.reason
        return Point(compute_flops=nominal_flops(run, ref.budget_nimg), status=status, reason=reason, **common)
    metrics, problems = {}, []
    for name, key in plan.metrics.items():
        value = record.get(key)
        if value is None:
            problems.append(f"its evaluation record at {ref.budget_nimg:,} images has no {key}")
        elif not math.isfinite(float(value)):
            problems.append(f"{name} is {value} at {ref.budget_nimg:,} images (non-finite samples?)")
        else:
            metrics[name] = float(value)
    cost = dict(
        compute_flops=float(record.get("Compute/train_flops", nominal_flops(run, ref.budget_nimg))),
        gpu_hours=float(record.get("Compute/device_hours", math.nan)),
        wall_sec=3600.0 * float(record.get("Compute/wall_hours", math.nan)),
    )
    if problems:
        return Point(status="failed", reason="; ".join(problems), metrics=metrics, **cost, **common)
    return Point(metrics=metrics, **cost, **common)


def teacher_flops(plan: Plan, states: dict[int, RunState]) -> dict[str, Optional[float]]:
    """Per size, the teacher's own training FLOPs as its network file records them (`Compute/init_train_flops` of
    an evaluation record), or None where no record carries it. Reported alongside, never added to a point."""
    out: dict[str, Optional[float]] = {s.name: None for s in plan.sweep.sizes}
    for run in plan.runs:
        for record in states[run.index].records.values():
            if "Compute/init_train_flops" in record:
                out[run.size] = float(record["Compute/init_train_flops"])
    return out
