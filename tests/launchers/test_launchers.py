"""The real launchers on CPU: `deepspeed` (1 node x 2 processes, and 2 simulated nodes on one machine), torchrun,
and the command line's error handling. Each run trains the quickstart teacher for a few steps on digit shards."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.distributed import free_port
from tests.launchers.common import make_digits

pytestmark = pytest.mark.slow  # Several processes or a full run: not in the fast subset.

ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_digits(str(tmp_path_factory.mktemp("digits")))


def _args(digits, run_dir):
    return [
        "launchers/train.py",
        "--config",
        "configs/demo-digits-teacher.yaml",
        "--train.batch_size=64",
        "--train.batch_gpu=32",
        f"--data.url={digits}",
        f"--run_dir={run_dir}",
        "--train.total_nimg=128",
        "--train.status_nimg=64",
        "--logging.sample_grid=0",
        "--checkpoint.interval_nimg=128",
        "--data.num_workers=1",
    ]


def _check_run(run_dir, ranks):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "stats.jsonl"))]
    assert [r["kimg"] for r in rows] == [0.064, 0.128]
    assert all(r["Loss/mean"] == r["Loss/mean"] for r in rows)  # finite
    assert os.path.isdir(os.path.join(run_dir, "checkpoints"))
    log = open(os.path.join(run_dir, "config.yaml")).read()
    assert "demo-digits8" in log
    assert json.load(open(os.path.join(run_dir, "DONE")))["nimg"] == 128  # The run reached its end.


def _run(cmd, timeout=240):
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_deepspeed_launcher_one_node_two_processes(digits, tmp_path):
    out = _run(
        [os.path.join(BIN, "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
        + _args(digits, tmp_path / "run")
    )
    assert "64 = 32 x 1 rounds x 2 ranks" in out
    _check_run(tmp_path / "run", 2)


def test_deepspeed_launcher_two_simulated_nodes(digits, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    port = str(free_port())
    base = [
        os.path.join(BIN, "deepspeed"),
        "--hostfile",
        str(hostfile),
        "--num_nodes",
        "2",
        "--num_gpus",
        "1",
        "--no_ssh",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        port,
    ]
    args = _args(digits, tmp_path / "run")
    node1 = subprocess.Popen(
        base + ["--node_rank", "1"] + args,
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = _run(base + ["--node_rank", "0"] + args)
        assert node1.wait(timeout=120) == 0, node1.stdout.read()[-3000:]
    finally:
        if node1.poll() is None:
            node1.kill()
    assert "64 = 32 x 1 rounds x 2 ranks" in out
    _check_run(tmp_path / "run", 2)


def test_torchrun(digits, tmp_path):
    out = _run(
        [os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", "2"] + _args(digits, tmp_path / "run")
    )
    assert "64 = 32 x 1 rounds x 2 ranks" in out
    _check_run(tmp_path / "run", 2)


def test_bad_override_is_explained():
    proc = subprocess.run(
        [sys.executable, "launchers/train.py", "--config", "configs/demo-digits.yaml", "--ect.qq=3"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "ect.qq: unknown option. Did you mean 'q'?" in proc.stderr


def test_dry_run_prints_resolved_config_and_deepspeed_json():
    proc = subprocess.run(
        [sys.executable, "launchers/train.py", "--config", "configs/ect-img512-xl.yaml", "--dry-run"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr  # The recipe's init file and bucket are placeholders (test_errors.py).
    assert "edm2-img512-xl" in proc.stdout and '"zero_optimization"' in proc.stdout
