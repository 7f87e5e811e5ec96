"""A sweep as a SLURM array job: one array task per run (per point in `separate` mode), each running
`launchers/slurm_train.sbatch` (its preemption handling: SIGUSR1 before the time limit, checkpoint, requeue).

    paths = write_slurm(plan, sweep_path="configs/sweeps/img64-ecm.yaml", workdir=os.getcwd())  # the repository root
    # sbatch <out_dir>/slurm/sweep.sbatch   then, when the array is done:
    # python tools/scaling.py configs/sweeps/img64-ecm.yaml report

`<out_dir>/slurm/tasks.tsv` lists the runs (index, run folder, recipe, overrides; tab-separated). A task whose run
is already done (`tools/scaling.py <sweep> done <index>`) exits at once, so re-submitting the array after a partial
failure trains only what is missing; a requeued task resumes from its run's newest complete checkpoint.
"""

from __future__ import annotations

import os
import shlex

from ect_scale.scaling.plan import Plan

TASKS = "tasks.tsv"
SCRIPT = "sweep.sbatch"


def tasks_text(plan: Plan) -> str:
    """One line per run: index, run_dir, recipe, then its `--key=value` overrides (run_dir excluded), tab-separated."""
    lines = []
    for run in plan.runs:
        args = [a for a in run.args if not a.startswith("--run_dir=")]
        lines.append("\t".join([str(run.index), run.run_dir, plan.sweep.recipe, *args]))
    return "\n".join(lines) + "\n"


def script_text(plan: Plan, sweep_path: str, workdir: str, tasks_path: str, log_dir: str) -> str:
    """The array job script (see the module docstring). Tasks start in `workdir`, where the sweep's relative paths
    and `launchers/slurm_train.sbatch` are found (the repository root)."""
    s = plan.sweep.slurm
    n = len(plan.runs)
    array = f"0-{n - 1}" + (f"%{s.max_parallel}" if s.max_parallel else "")
    name = os.path.splitext(os.path.basename(sweep_path))[0]
    directives = [
        f"--job-name=scaling-{name}",
        f"--array={array}",
        f"--nodes={s.nodes}",
        f"--ntasks-per-node={s.gpus_per_node}",
        f"--gpus-per-node={s.gpus_per_node}",
        f"--cpus-per-task={s.cpus_per_task}",
        f"--time={s.time}",
        "--signal=B:USR1@120",
        "--requeue",
        "--open-mode=append",
        f"--output={os.path.join(log_dir, '%x-%A_%a.out')}",
    ]
    directives += [f"--partition={s.partition}"] if s.partition else []
    directives += [f"--account={s.account}"] if s.account else []
    exports = "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in s.env.items())
    q = shlex.quote
    return f"""#!/bin/bash
# Scaling sweep {sweep_path} as a SLURM array: {n} tasks, one per run ({plan.sweep.mode} mode), written by
# `python tools/scaling.py {sweep_path} slurm`. Submit:  sbatch {os.path.join(os.path.dirname(tasks_path), SCRIPT)}
# Each task trains one run through launchers/slurm_train.sbatch (checkpoint on SIGUSR1 120 s before the time limit,
# then requeue; a requeued task resumes from the newest complete checkpoint). A task whose run is done exits at once.
# When the array has finished:  python tools/scaling.py {sweep_path} report
{chr(10).join("#SBATCH " + d for d in directives)}

set -uo pipefail
cd {q(workdir)}
{exports}TASKS={q(tasks_path)}
line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$TASKS")
IFS=$'\\t' read -r -a fields <<< "$line"
if [ "${{fields[0]:-}}" != "$SLURM_ARRAY_TASK_ID" ]; then
    echo "task $SLURM_ARRAY_TASK_ID: no such line in $TASKS (re-write it: python tools/scaling.py {sweep_path} slurm)"
    exit 2
fi
if python tools/scaling.py {q(sweep_path)} done "$SLURM_ARRAY_TASK_ID"; then
    echo "task $SLURM_ARRAY_TASK_ID: run ${{fields[1]}} is done already"
    exit 0
fi
export RUN_DIR="${{fields[1]}}" CONFIG="${{fields[2]}}"
exec bash launchers/slurm_train.sbatch "${{fields[@]:3}}"
"""


def write_slurm(plan: Plan, sweep_path: str, workdir: str) -> dict[str, str]:
    """Write `<out_dir>/slurm/{tasks.tsv, sweep.sbatch}` (and the log folder); return their paths."""
    folder = os.path.abspath(os.path.join(plan.sweep.out_dir, "slurm"))
    log_dir = os.path.join(folder, "logs")
    os.makedirs(log_dir, exist_ok=True)
    tasks = os.path.join(folder, TASKS)
    with open(tasks, "w") as f:
        f.write(tasks_text(plan))
    script = os.path.join(folder, SCRIPT)
    with open(script, "w") as f:
        f.write(script_text(plan, sweep_path, os.path.abspath(workdir), tasks, log_dir))
    os.chmod(script, 0o755)
    return {"script": script, "tasks": tasks, "logs": log_dir}
