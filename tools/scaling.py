#!/usr/bin/env python3
"""Scaling-law sweeps of ECT: train a grid of model sizes x budgets x seeds, collect the points, fit and report.

    python tools/scaling.py configs/sweeps/digits-cpu.yaml teachers   # pretrain each size's missing teacher
    python tools/scaling.py configs/sweeps/digits-cpu.yaml            # run (skips finished points), then report
    python tools/scaling.py configs/sweeps/digits-cpu.yaml status     # what is done, partial, failed, not started
    python tools/scaling.py configs/sweeps/img64-ecm.yaml slurm       # a SLURM array script, one task per run
    python tools/scaling.py configs/sweeps/img64-ecm.yaml report      # table, fits, plots from the run folders

Commands:
  all (default)  run, then report
  run            train every run not done, one after another, through launchers/train.py (the sweep's launcher:
                 python, deepspeed or torchrun); an interrupted run resumes from its own checkpoints
  teachers       pretrain the teacher of every size whose init file is missing (sizes[].teacher_config)
  status         one line per run
  slurm          write <out_dir>/slurm/sweep.sbatch and tasks.tsv (submit with sbatch)
  report         <out_dir>/report/: points.csv/.json, fits.json, report.md, one PNG per metric, sweep.md
  done INDEX     exit 0 if run INDEX is done, 1 if not (the SLURM array's check)

The sweep file's keys are in ect_scale/scaling/sweep.py and docs/scaling.md. Run from the repository root: paths in
sweep files are relative to it. A bad sweep file, a missing teacher, a failed run or a point without an evaluation
print one line `error: <what>. Fix: <how>` and exit with code 2; missing and failed points are listed in the report
with their reason and never fitted.
"""

import argparse
import os
import sys

from ect_scale.runtime import entry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("all", "run", "teachers", "status", "slurm", "report", "done")


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="the sweep file (configs/sweeps/*.yaml)")
    ap.add_argument("command", nargs="?", default="all", choices=COMMANDS, help="what to do (default: all)")
    ap.add_argument("index", nargs="?", type=int, help="done: the run's index (tasks.tsv, status)")
    ap.add_argument("--verbose", action="store_true", help="run: show the trainer's output, not only one line a run")
    ap.add_argument("--only", type=int, nargs="+", metavar="INDEX", help="run: only these runs (status shows indices)")
    ap.add_argument("--no-retry", action="store_true", help="run: leave runs whose last launch failed alone")
    ap.add_argument("--partial", action="store_true", help="report: exit 0 even if points are missing or failed")
    ap.add_argument("--out", metavar="DIR", help="report: where to write it (default <out_dir>/report)")
    args = ap.parse_args(argv)
    if args.command == "done" and args.index is None:
        ap.error("done needs the run's INDEX")
    return args


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    return entry.run(lambda: body(args), program="scaling")


def body(args) -> int:
    from ect_scale.scaling.plan import load_plan

    plan = load_plan(args.sweep)
    if args.command == "done":
        return done(plan, args.index)
    if args.command == "status":
        return status(plan)
    if args.command == "slurm":
        return slurm(plan, args.sweep)
    if args.command in ("all", "run", "teachers"):
        from ect_scale.scaling.runner import SweepRunner

        runner = SweepRunner(plan, os.path.join(REPO, "launchers", "train.py"), verbose=args.verbose)
        if args.command == "teachers":
            runner.teachers()
            return 0
        failed = runner.run(args.only, retry_failed=not args.no_retry)
        if args.command == "run":
            report_failed(plan, failed)
            return 0
    return report(plan, args.out, args.partial)  # Lists the points of failed runs as failed, with their reason.


def report_failed(plan, failed) -> None:
    """After `run`: one line per run that is not done, then a UserError if any failed."""
    from ect_scale.runtime.errors import UserError
    from ect_scale.scaling.collect import run_state

    if not failed:
        n_done = sum(run_state(plan, r).status == "done" for r in plan.runs)
        print(f"[sweep] {n_done} of {len(plan.runs)} runs are done")
        return
    first = run_state(plan, failed[0])
    raise UserError(
        f"{len(failed)} of {len(plan.runs)} runs are not done ({failed[0].label()}: {first.reason})",
        "see each run's train.log; fix the cause and re-run the same command (finished runs are skipped)",
    )


def done(plan, index: int) -> int:
    from ect_scale.runtime.errors import UserError
    from ect_scale.scaling.collect import run_state
    from ect_scale.scaling.plan import find_run

    run = find_run(plan, index)
    if run is None:
        raise UserError(f"the sweep has no run {index} (it has 0 ... {len(plan.runs) - 1})", "pass a run index")
    return 0 if run_state(plan, run).status == "done" else 1


def status(plan) -> int:
    from ect_scale.scaling.collect import run_state

    width = max(len(r.size) for r in plan.runs)
    print(f"{'#':>3}  {'size':<{width}}  {'seed':>4}  {'budget':>12}  state")
    counts: dict[str, int] = {}
    for run in plan.runs:
        state = run_state(plan, run)
        counts[state.status] = counts.get(state.status, 0) + 1
        print(f"{run.index:>3}  {run.size:<{width}}  {run.seed:>4}  {run.budget_nimg:>12,}  {state.describe(run)}")
    print(f"{len(plan.runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def slurm(plan, sweep_path: str) -> int:
    from ect_scale.scaling.slurm import write_slurm

    paths = write_slurm(plan, sweep_path, os.getcwd())
    print(f"wrote {paths['script']} ({len(plan.runs)} array tasks) and {paths['tasks']}")
    print(f"submit:  sbatch {paths['script']}")
    print(f"then:    python tools/scaling.py {sweep_path} report")
    return 0


def report(plan, out_dir, partial: bool) -> int:
    from ect_scale.scaling.study import report_sweep

    summary = report_sweep(plan, out_dir, partial=partial)
    print(f"[report] {os.path.join(summary['out_dir'], 'sweep.md')}")
    for mode, entry_ in summary["modes"].items():
        for path in entry_.get("files", {}).values():
            print(f"[report] {mode}: {path}")
        for metric, sizes in entry_.get("exponents", {}).items():
            parts = [f"{s} b={e['b']:.3g} [{e['ci_b'][0]:.3g}, {e['ci_b'][1]:.3g}]" for s, e in sizes.items()]
            print(f"[report] {mode} {metric}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
