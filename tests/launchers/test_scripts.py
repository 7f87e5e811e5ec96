"""The shell scripts we ship, with stand-ins for the cluster commands: `require_done` (a run without DONE is a
failure, whatever `deepspeed` returned) and the SLURM script's restart budget (a failed attempt, e.g. a hang with
exit code 3, is requeued up to RESTARTS times in a row; a finished run is not)."""

import os
import subprocess

from tests.conftest import REPO

SRUN = """#!/bin/bash
# Stand-in for srun: the training "run" exits with $FAKE_RC and writes DONE if $FAKE_DONE is set.
[ -n "$FAKE_DONE" ] && echo '{"nimg": 128}' > "$RUN_DIR/DONE"
exit "$FAKE_RC"
"""
SCONTROL = """#!/bin/bash
# Stand-in for scontrol: node names, and a log of requeue requests.
if [ "$1" = show ]; then echo node1; else echo "$*" >> "$REQUEUES"; fi
"""


def _bin(tmp_path) -> str:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return str(folder)


def test_require_done_tells_a_finished_run_from_a_crashed_one(tmp_path):
    def check(run_dir) -> subprocess.CompletedProcess:
        script = f"source launchers/require_done.sh && require_done {run_dir}"
        return subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True)

    crashed = check(tmp_path)
    assert crashed.returncode == 1 and crashed.stderr.count("\n") == 1
    assert crashed.stderr.startswith(f"error: the training run in {tmp_path} did not finish (no {tmp_path}/DONE)")
    (tmp_path / "DONE").write_text("{}")
    assert check(tmp_path).returncode == 0


def test_slurm_script_requeues_failed_attempts_within_its_budget(tmp_path):
    run_dir, requeues = tmp_path / "run", tmp_path / "requeues"
    env = dict(
        os.environ,
        PATH=f"{_bin(tmp_path)}:{os.environ['PATH']}",
        SLURM_JOB_ID="42",
        SLURM_JOB_NODELIST="node1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_JOB_NAME="ect",
        RUN_DIR=str(run_dir),
        RESTARTS="2",
        REQUEUES=str(requeues),
    )

    def attempt(rc: int, done: bool = False) -> tuple[int, str, int]:
        proc = subprocess.run(
            ["bash", os.path.join(REPO, "launchers", "slurm_train.sbatch")],
            cwd=tmp_path,
            env=dict(env, FAKE_RC=str(rc), FAKE_DONE="1" if done else ""),
            capture_output=True,
            text=True,
            timeout=60,
        )
        n = len(requeues.read_text().splitlines()) if requeues.exists() else 0
        return proc.returncode, proc.stdout, n

    code, out, n = attempt(3)  # A hang caught by the watchdog.
    assert (code, n) == (3, 1) and "failed attempt 1 of 2 allowed in a row" in out and "3 = hang" in out
    code, out, n = attempt(2)
    assert (code, n) == (2, 2) and "failed attempt 2 of 2" in out
    code, out, n = attempt(2)
    assert (code, n) == (2, 2) and "3 attempts in a row: giving up" in out  # Not requeued.
    assert len((run_dir / "logs" / "slurm-failed-attempts").read_text().splitlines()) == 3
    code, out, n = attempt(0, done=True)
    assert (code, n) == (0, 2) and "training finished" in out
    assert not (run_dir / "logs" / "slurm-failed-attempts").exists()  # A finished run resets the count.
