"""A new user's bad inputs, through the real commands: each expected failure is one line `error: <what>. Fix: <how>`,
exit code 2 and the traceback in <run_dir>/logs; a bug keeps its traceback; with several ranks the line is printed
once and the ranks that did not fail stop within seconds."""

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.distributed import free_port
from tests.launchers.common import (
    BIN,
    ENV,
    SYNTHETIC,
    TEACHER,
    assert_one_line_error,
    error_lines,
    log_of,
    make_digits,
    run,
)


@pytest.mark.slow  # ~10 s of launcher subprocesses.
def test_missing_data_manifest(tmp_path):
    manifest = tmp_path / "nowhere" / "manifest.json"
    proc = run(TEACHER + [f"--data.url={manifest}", f"--run_dir={tmp_path}/run"])
    assert_one_line_error(proc, f"error: cannot read {manifest}: not found")
    assert f"(full log: {tmp_path}/run/logs/error-rank0.log)" in proc.stderr
    assert "Traceback (most recent call last)" in log_of(proc)


@pytest.mark.slow  # ~10 s of launcher subprocesses.
def test_unreachable_s3_endpoint(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # Nothing listens there.
    env = dict(ENV, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
    proc = run(
        TEACHER
        + [
            "--data.url=s3://bucket/digits/manifest.json",
            f"--data.endpoint_url={endpoint}",
            f"--run_dir={tmp_path}/run",
        ],
        env=env,
    )
    line = assert_one_line_error(proc, "error: cannot read s3://bucket/digits/manifest.json: the S3 endpoint")
    assert f"{endpoint} is unreachable" in line and "Fix: check data.endpoint_url" in line


def test_missing_init_file(tmp_path):
    proc = run(TEACHER + SYNTHETIC + [f"--init={tmp_path}/teacher.safetensors", f"--run_dir={tmp_path}/run"])
    assert_one_line_error(proc, f"error: network file not found: {tmp_path}/teacher.safetensors. Fix: check the path")


def test_port_in_use_says_how_to_pick_another(tmp_path):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run(TEACHER + SYNTHETIC + [f"--run_dir={tmp_path}/run"], env=dict(ENV, MASTER_PORT=str(port)))
    line = assert_one_line_error(proc, f"error: the rendezvous port 127.0.0.1:{port} (MASTER_PORT) is already in use")
    assert "deepspeed --master_port <port>" in line


@pytest.mark.slow
def test_incompatible_checkpoint(tmp_path):
    args = TEACHER + SYNTHETIC + [f"--run_dir={tmp_path}/run", "--train.total_nimg=64", "--ema.export_nimg=0"]
    first = run(args)
    assert first.returncode == 0, first.stderr[-3000:]
    proc = run(args + ["--train.total_nimg=128", "--optim.lr=0.02"])
    line = assert_one_line_error(
        proc, f"error: {tmp_path}/run/checkpoints/ckpt-000000000064 was written with a different configuration"
    )
    assert "optim.lr: 0.01 (checkpoint) -> 0.02 (now). Fix: resume with the checkpoint's values" in line
    # The refused start changed no record of the run: config.yaml still holds the values the error points to.
    assert "lr: 0.01" in (tmp_path / "run" / "config.yaml").read_text()
    assert len(os.listdir(tmp_path / "run" / "configs")) == 1


@pytest.mark.slow  # ~10 s of launcher subprocesses.
def test_unexpected_exception_keeps_its_traceback(tmp_path):
    proc = run(
        [sys.executable, "tests/launchers/inject.py", "0", "bug", "-1", "--"]
        + TEACHER[2:]
        + SYNTHETIC
        + [f"--run_dir={tmp_path}/run", "--checkpoint.enabled=false"]
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr and "ZeroDivisionError: injected bug" in proc.stderr
    assert error_lines(proc.stderr) == ["error: unexpected ZeroDivisionError: injected bug"]
    assert "ZeroDivisionError: injected bug" in log_of(proc)


def _rank_env(rank: int, port: int) -> dict:
    return dict(
        ENV, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


@pytest.mark.slow
def test_one_rank_fails_and_the_stuck_one_stops(tmp_path):
    """Rank 1 runs out of GPU memory; rank 0 is stuck outside any collective (as in a GPU wait). Started like
    `srun` starts tasks, with no launcher to kill the survivor: rank 0 must stop by itself, quietly."""
    port = free_port()
    cmd = (
        [sys.executable, "tests/launchers/inject.py", "1", "oom", "0", "--"]
        + TEACHER[2:]
        + SYNTHETIC
        + [f"--run_dir={tmp_path}/run", "--checkpoint.enabled=false", "--train.total_nimg=100000"]
    )
    procs = [
        subprocess.Popen(
            cmd, cwd=REPO, env=_rank_env(r, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for r in range(2)
    ]
    try:
        out1, err1 = procs[1].communicate(timeout=240)
        failed_at = time.monotonic()
        out0, err0 = procs[0].communicate(timeout=60)
        stopped_after = time.monotonic() - failed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[1].returncode == 2 and procs[0].returncode == 2, (err0[-2000:], err1[-2000:])
    lines = error_lines(err1)
    assert len(lines) == 1 and lines[0].startswith("error (rank 1): out of GPU memory (CUDA out of memory.")
    assert "Fix: lower train.batch_gpu" in lines[0] and "Traceback" not in err1
    assert error_lines(out0 + err0) == [] and "Traceback" not in err0  # Printed once, by the rank that failed.
    assert stopped_after < 15
    note = open(tmp_path / "run" / "logs" / "error-rank0.log").read()
    assert "stopping this rank because rank 1 failed: out of GPU memory" in note


@pytest.mark.slow
def test_a_failure_on_every_rank_is_printed_once(tmp_path):
    proc = run(
        [os.path.join(BIN, "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
        + TEACHER[1:]
        + SYNTHETIC
        + [f"--init={tmp_path}/missing.safetensors", f"--run_dir={tmp_path}/run"]
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert error_lines(proc.stdout + proc.stderr) == [
        f"error: network file not found: {tmp_path}/missing.safetensors. Fix: check the path, or create it with "
        "tools/import_edm2.py (from an EDM2 pickle) or tools/export.py"
    ]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(os.listdir(tmp_path / "run" / "logs")) == ["error-rank0.log", "error-rank1.log"]


@pytest.mark.slow  # ~10 s of launcher subprocesses.
def test_tools_report_one_line(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = dict(ENV, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
    shards = run(
        [
            sys.executable,
            "tools/make_shards.py",
            "--source",
            "sklearn-digits",
            "--out",
            "s3://bucket/digits",
            "--resolution",
            "8",
            "--pixels",
            "--num-shards",
            "2",
            "--endpoint-url",
            endpoint,
        ],
        env=env,
    )
    assert f"the S3 endpoint {endpoint} is unreachable" in assert_one_line_error(shards, "error: cannot write s3://")
    export = run([sys.executable, "tools/export.py", str(tmp_path), "--out", str(tmp_path / "net.safetensors")])
    assert_one_line_error(export, f"error: no complete checkpoint found at {tmp_path}")
    evaluate = run(
        [
            sys.executable,
            "launchers/evaluate.py",
            "--net",
            str(tmp_path / "missing.safetensors"),
            "--ref",
            str(tmp_path / "missing.pkl"),
            "--num-samples",
            "4",
        ]
    )
    assert_one_line_error(evaluate, "error: ")


def test_dry_run_lists_every_problem_of_the_512_recipe():
    proc = run([sys.executable, "launchers/train.py", "--config", "configs/ect-img512-s.yaml", "--dry-run"])
    assert proc.returncode == 2 and "edm2-img512-s" in proc.stdout and '"zero_optimization"' in proc.stdout
    lines = proc.stderr.splitlines()
    start = lines.index("error: --dry-run found 2 problems this run would meet:")
    assert lines[start + 1].startswith("  1. init: pretrained/edm2-img512-s-2147483-0.130.safetensors does not exist")
    assert lines[start + 2].startswith(
        "  2. data.url: s3://YOUR-BUCKET/imagenet512-sdvae/manifest.json is a placeholder"
    )


@pytest.mark.slow  # ~10 s of launcher subprocesses.
def test_dry_run_passes_when_everything_is_there(tmp_path):
    manifest = make_digits(str(tmp_path / "digits"))
    proc = run(
        TEACHER + [f"--data.url={manifest}", f"--run_dir={tmp_path}/run", "--dry-run"], env=dict(ENV, WORLD_SIZE="2")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: ok (data, run_dir, checkpoint.dir checked; 2 rank(s))" in proc.stdout
    assert not os.path.exists(tmp_path / "run")  # A dry run creates nothing.
