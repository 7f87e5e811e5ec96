"""Running a sweep on one machine: its runs one after another through the real launcher, skipping finished runs and
resuming an interrupted one through the trainer's own checkpoints; and the sizes' teachers before that.

    runner = SweepRunner(plan, launcher_script="launchers/train.py", say=print)
    runner.teachers()          # pretrain each size's missing teacher (sizes[].teacher_config)
    failed = runner.run()      # train every run not done; returns the runs that failed

Each launch appends the trainer's output to `<run_dir>/train.log` and a line to `<run_dir>/sweep-attempts.jsonl`
(exit code, error line, seconds). A launched trainer gets SIGTERM if the sweep process dies (even by SIGKILL), so it
checkpoints at its next step and exits; re-running the sweep resumes it from there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

from ect_scale.config import load_config
from ect_scale.runtime.errors import UserError
from ect_scale.runtime.procs import set_parent_death_signal
from ect_scale.scaling.collect import record_attempt, run_state
from ect_scale.scaling.plan import Plan, Run
from ect_scale.scaling.sweep import LauncherSpec

LOG = "train.log"


def launch_command(spec: LauncherSpec, script: str, recipe: str, args: tuple[str, ...] | list[str]) -> list[str]:
    """The command line that trains one run with `spec`'s launcher."""
    tail = [script, "--config", recipe, *args]
    if spec.kind == "python":
        return [sys.executable, *tail]
    if spec.kind == "deepspeed":
        return [_bin("deepspeed"), "--num_gpus", str(spec.procs), "--master_port", str(spec.master_port), *tail]
    return [
        _bin("torchrun"),
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(spec.procs),
        f"--master-port={spec.master_port}",
    ] + tail


def _bin(name: str) -> str:
    """The launcher next to this Python (a virtual environment's bin/), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.access(here, os.X_OK) else shutil.which(name) or name


def _die_with_parent() -> None:  # Runs in the child between fork and exec.
    set_parent_death_signal(signal.SIGTERM)


class SweepRunner:
    """Runs a plan's runs on this machine (see the module docstring)."""

    def __init__(
        self, plan: Plan, launcher_script: str, say: Callable[[str], None] = print, verbose: bool = False
    ) -> None:
        self.plan = plan
        self.script = launcher_script
        self.say = say
        self.verbose = verbose
        self.env = {**os.environ, **plan.sweep.launcher.env}

    # ------------------------------------------------------------------ teachers
    def teachers(self) -> None:
        """Pretrain every size's teacher whose `init` file is missing, with its `teacher_config` recipe."""
        for i, size in enumerate(self.plan.sweep.sizes):
            if not size.init:
                self.say(f"[teachers] {size.name}: no init file: its points start from a random network")
                continue
            if os.path.exists(size.init):
                self.say(f"[teachers] {size.name}: {size.init} exists, skipped")
                continue
            if not size.teacher_config:
                raise UserError(
                    f"size {size.name}: its teacher {size.init} does not exist and sizes[{i}].teacher_config is unset",
                    "name the recipe that pretrains it in sizes[].teacher_config, or pretrain it yourself",
                )
            run_dir = load_config(size.teacher_config).run_dir
            self.say(f"[teachers] {size.name}: pretraining with {size.teacher_config} -> {run_dir}")
            t0 = time.time()
            rc, error = self._launch(
                run_dir, launch_command(self.plan.sweep.launcher, self.script, size.teacher_config, [])
            )
            if rc != 0:
                raise UserError(
                    f"teacher {size.name} ({size.teacher_config}) failed: {error}",
                    f"see {os.path.join(run_dir, LOG)}; re-running resumes it",
                )
            if not os.path.exists(size.init):
                raise UserError(
                    f"teacher {size.name} finished but {size.init} does not exist",
                    f"set sizes[{i}].init to the file it exported (ls {os.path.join(run_dir, 'ema')})",
                )
            self.say(f"[teachers] {size.name}: done in {time.time() - t0:.0f} s")

    def check_eval_files(self, runs: list[Run]) -> None:
        """UserError naming the first local evaluation file a run needs and lacks: the trainer reads them only
        when it first evaluates, after training to the first budget."""
        for run in runs:
            ev = run.cfg.eval
            needed = {"eval.ref_stats": ev.ref_stats}
            needed.update({"eval.classifier_path": ev.classifier_path} if "fd_classifier" in ev.metrics else {})
            needed.update({"eval.inception_path": ev.inception_path} if "fid" in ev.metrics else {})
            needed.update({"eval.dinov2_path": ev.dinov2_path} if "fd_dinov2" in ev.metrics else {})
            for option, path in needed.items():
                if path and "://" not in path and not os.path.exists(path):
                    raise UserError(
                        f"{run.label()}: {option} {path} does not exist (the run would train, then fail to evaluate)",
                        "create it first (docs/evaluation.md; for the digits: tools/train_classifier.py and "
                        "tools/fid_ref.py --shards, as benchmarks/scaling_cpu.sh does) or fix the path",
                    )

    def check_teachers(self, runs: list[Run]) -> None:
        """UserError naming the first size whose teacher file is missing (before anything trains)."""
        for i, size in enumerate(self.plan.sweep.sizes):
            if size.init and any(r.size == size.name for r in runs) and not os.path.exists(size.init):
                how = "python tools/scaling.py <sweep> teachers" if size.teacher_config else "pretrain it"
                raise UserError(
                    f"size {size.name}: its teacher file {size.init} does not exist",
                    f"{how} (sizes[{i}].teacher_config), or point sizes[{i}].init at an existing network file",
                )

    # ------------------------------------------------------------------ runs
    def run(self, indices: Optional[list[int]] = None, retry_failed: bool = True) -> list[Run]:
        """Train every run (or those in `indices`) that is not done, one after another; returns those that failed."""
        runs = [r for r in self.plan.runs if indices is None or r.index in indices]
        todo, failed = [], []
        for run in runs:
            state = run_state(self.plan, run)
            if state.status == "done":
                self.say(f"[sweep] {self._tag(run)}: done, skipped")
            elif state.status == "unmeasured" or (state.status == "failed" and not retry_failed):
                self.say(f"[sweep] {self._tag(run)}: {state.status}: {state.reason}")
                failed.append(run)
            else:
                todo.append((run, state))
        self.check_teachers([r for r, _ in todo])
        self.check_eval_files([r for r, _ in todo])
        for run, state in todo:
            if not self.train(run, state.checkpoint_nimg):
                failed.append(run)
        return failed

    def train(self, run: Run, resume_nimg: int) -> bool:
        """Launch one run and wait for it; True if it is done afterwards."""
        where = f"resuming at {resume_nimg:,} img" if resume_nimg else "from the start"
        self.say(f"[sweep] {self._tag(run)}: training {where} (log: {os.path.join(run.run_dir, LOG)})")
        t0 = time.time()
        cmd = launch_command(self.plan.sweep.launcher, self.script, self.plan.sweep.recipe, run.args)
        rc, error = self._launch(run.run_dir, cmd)
        record_attempt(
            run.run_dir,
            {
                "start": t0,
                "wall_s": round(time.time() - t0, 1),
                "exit_code": rc,
                "error": error,
                "log": os.path.join(run.run_dir, LOG),
                "command": cmd,
            },
        )
        state = run_state(self.plan, run)
        secs = f"{time.time() - t0:.0f} s"
        if state.status == "done":
            values = _values(self.plan, state.records.get(run.budget_nimg, {}))
            self.say(f"[sweep] {self._tag(run)}: done in {secs}{values}")
            return True
        self.say(f"[sweep] {self._tag(run)}: {state.status} after {secs}: {state.reason}")
        return False

    def _tag(self, run: Run) -> str:
        return f"{run.index + 1}/{len(self.plan.runs)} {run.label()}"

    def _launch(self, run_dir: str, cmd: list[str]) -> tuple[int, Optional[str]]:
        """Run `cmd`, its output appended to <run_dir>/train.log (echoed with `verbose`); (exit code, error line)."""
        os.makedirs(run_dir, exist_ok=True)
        log = os.path.join(run_dir, LOG)
        with open(log, "a") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
            out.flush()
            start = out.tell()
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, preexec_fn=_die_with_parent
            )
            echo = _Echo(log, start) if self.verbose else None
            try:
                rc = proc.wait()
            except KeyboardInterrupt:  # The child got the same Ctrl-C: let it stop (it says how to resume).
                try:
                    proc.wait(timeout=300)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
            finally:
                if echo is not None:
                    echo.stop()
        return rc, None if rc == 0 else _error_line(log, start, rc)


def _error_line(log: str, start: int, rc: int) -> str:
    """The last `error...` line the launch printed, or its exit code."""
    with open(log, errors="replace") as f:
        f.seek(start)
        lines = [line.strip() for line in f if line.startswith("error")]
    return lines[-1] if lines else f"exit code {rc} (no error line; see {log})"


def _values(plan: Plan, record: dict) -> str:
    parts = [f"{name} {float(record[key]):.4g}" for name, key in plan.metrics.items() if key in record]
    return (": " + ", ".join(parts)) if parts else ""


class _Echo:
    """Copies what is appended to a file to stdout until stopped (the trainer writes the file, never a pipe)."""

    def __init__(self, path: str, offset: int) -> None:
        self.path, self.offset = path, offset
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        with open(self.path, errors="replace") as f:
            f.seek(self.offset)
            while True:
                chunk = f.read()
                if chunk:
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
                elif self.done.is_set():
                    return
                else:
                    time.sleep(0.2)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
