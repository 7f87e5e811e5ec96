"""Preemption through the real launcher (one CPU process): SIGTERM mid-run -> a checkpoint at the next step
boundary and a clean exit; re-running the command resumes there and ends bit-identical to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.checkpoint.common import assert_states_equal, losses
from tests.conftest import REPO
from tests.distributed import free_port

pytestmark = pytest.mark.slow  # Several processes or a full run: not in the fast subset.

CONFIG = {
    "network": {"preset": "tiny-latent", "compute_dtype": "float32", "dropout": 0.2},
    "engine": {"zero_stage": 1, "precision": "fp32"},
    "train": {"batch_size": 4, "batch_gpu": 4, "total_nimg": 1_000_000, "status_nimg": 4},
    "optim": {"lr": 0.01, "decay_nimg": 0},
    "ect": {"stage_nimg": 16, "q": 2, "P_mean": 0.0, "P_std": 1.0},
    "data": {"kind": "synthetic", "synthetic_resolution": 16, "synthetic_label_dim": 10, "num_workers": 0},
    "ema": {"stds": [0.05], "export_nimg": 0, "export_dtype": "float32"},
    "checkpoint": {"interval_nimg": 1_000_000, "async_save": True},  # The stop waits for the background writer.
    "logging": {"progress": "plain", "tensorboard": False},
}


def _launch(config: str, run_dir: str, *overrides: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        DS_ACCELERATOR="cpu",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        MASTER_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        env.pop(k, None)
    log = open(os.path.join(os.path.dirname(run_dir), os.path.basename(run_dir) + ".log"), "ab")
    return subprocess.Popen(
        [
            sys.executable,
            os.path.join(REPO, "launchers", "train.py"),
            "--config",
            config,
            f"--run_dir={run_dir}",
            *overrides,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _log(run_dir: str) -> str:
    return open(run_dir + ".log").read()


def _wait_for_rows(run_dir: str, rows: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    path = os.path.join(run_dir, "stats.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, _log(run_dir)
        if os.path.exists(path) and sum(1 for _ in open(path)) >= rows:
            return
        time.sleep(0.2)
    raise TimeoutError(_log(run_dir))


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(tmp_path):
    from ect_scale.checkpoint.export import consolidated_network, find_checkpoint

    config = str(tmp_path / "tiny.yaml")
    yaml.safe_dump(CONFIG, open(config, "w"))
    run = str(tmp_path / "run")
    proc = _launch(config, run)
    _wait_for_rows(run, 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, _log(run)
    stopped = find_checkpoint(run)
    stop_nimg = int(stopped.tag.split("-")[1])
    assert stop_nimg >= 12 and stop_nimg % 4 == 0  # At a step boundary, not at an interval.
    assert f"Stopping at {stop_nimg:,} images" in _log(run)

    total = f"--train.total_nimg={stop_nimg + 8}"
    assert _launch(config, run, total).wait(timeout=120) == 0, _log(run)
    assert f"resumed from {stopped.display()} at {stop_nimg:,} images (exact resume" in _log(run)
    ref = str(tmp_path / "ref")
    assert _launch(config, ref, total).wait(timeout=120) == 0, _log(ref)

    assert losses(run) == losses(ref)
    for what in ("online", "power-0.050", "beta-0.9999"):
        a, _, meta_a = consolidated_network(find_checkpoint(run), what)
        b, _, meta_b = consolidated_network(find_checkpoint(ref), what)
        assert meta_a["nimg"] == meta_b["nimg"] == stop_nimg + 8
        assert_states_equal(a, b)
