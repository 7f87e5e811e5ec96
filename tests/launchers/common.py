"""Shared pieces of the launcher tests: the environment, running a user's command, small shard sets."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

ENV = dict(
    os.environ,
    DS_ACCELERATOR="cpu",
    OMP_NUM_THREADS="1",
    PYTHONUNBUFFERED="1",
    CUDA_VISIBLE_DEVICES="",
    PYTHONWARNINGS="ignore",
)
BIN = os.path.dirname(sys.executable)
# The quickstart teacher at the batch these tests count with (64 images a step: 32 per rank on 2 ranks).
TEACHER = [
    sys.executable,
    "launchers/train.py",
    "--config",
    "configs/demo-digits-teacher.yaml",
    "--train.batch_size=64",
    "--train.batch_gpu=32",
]
# The teacher on random 8x8 RGB data (the network takes 3 channels then): no shards needed.
SYNTHETIC = [
    "--data.kind=synthetic",
    "--data.synthetic_encoder=pixels",
    "--data.synthetic_resolution=8",
    "--network.img_channels=3",
    "--data.synthetic_label_dim=10",
    "--train.total_nimg=128",
    "--train.status_nimg=64",
    "--logging.sample_grid=0",
    "--logging.progress=plain",
]


def run(cmd: list[str], env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=timeout)


def error_lines(text: str) -> list[str]:
    """The lines a user reads as errors (DeepSpeed's own `[WARNING]` log lines aside)."""
    return [line for line in text.splitlines() if line.startswith("error")]


def assert_one_line_error(proc: subprocess.CompletedProcess, starts: str) -> str:
    """Exit code 2, no traceback, exactly one `error...` line (starting with `starts`); returns that line."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    lines = error_lines(text)
    assert len(lines) == 1 and lines[0].startswith(starts) and ". Fix: " in lines[0], lines or text[-3000:]
    return lines[0]


def log_of(proc: subprocess.CompletedProcess) -> str:
    """The error log the second line names."""
    path = proc.stderr.split("(full log: ", 1)[1].split(")", 1)[0]
    with open(path) as f:
        return f.read()


def make_digits(out: str, shards: int = 4) -> str:
    """512 digits as 8x8 grayscale shards (the teacher's input); returns the manifest path. Made in this process
    (the command line itself: tests/data/test_make_shards.py)."""
    from tests.conftest import load_script

    argv = ["--source", "sklearn-digits", "--out", out, "--resolution", "8", "--pixels", "--grayscale"]
    argv += ["--num-shards", str(shards), "--limit", "512", "--rank", "0", "--world-size", "1"]
    code = load_script("tools/make_shards.py").main(argv)
    assert code in (0, None), f"make_shards exited with {code}"
    return os.path.join(out, "manifest.json")
