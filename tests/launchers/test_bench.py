"""launchers/bench.py end to end on CPU: the JSON it prints is the one BENCHMARKS.md is built from."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.distributed import free_port

ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")


@pytest.mark.slow
def test_bench_reports_the_full_step_with_accumulation(tmp_path):
    out = tmp_path / "bench.jsonl"
    cmd = [
        sys.executable,
        "launchers/bench.py",
        "--preset",
        "tiny-latent",
        "--batch-gpu",
        "2",
        "--accum",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--max-memory-gib",
        "1",
        "--out",
        str(out),
        "--ema.stds=[0.05]",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert printed == json.loads(out.read_text().splitlines()[-1])
    assert printed["batch_size"] == 4 and printed["accumulation_rounds"] == 2 and printed["world_size"] == 1
    assert printed["ema_profiles"] == 2  # --ema.stds override reached the config (plus the traditional EMA).
    assert printed["skipped_steps"] == 0 and printed["img_per_sec"] > 0
    assert printed["precision"] == "bf16" and printed["device"] == "cpu" and printed["mfu"] is None
    assert printed["mem_limit_gb"] is None and printed["peak_reserved_gb"] == 0.0  # CUDA-only figures.
    assert printed["overlap_comm"] is True and printed["graph_weight_norm"] is True
    assert printed["train_flops_per_img"] == 4 * printed["fwd_flops"]


@pytest.mark.slow
def test_gate_times_concurrent_benchmarks_one_at_a_time(tmp_path):
    """Two benchmarks warm up together and are timed one after the other (their timed windows do not overlap);
    one runs EDM2's fp16 compute with loss scaling."""
    procs = []
    for i, precision in enumerate(["bf16", "fp16"]):
        cmd = [
            sys.executable,
            "launchers/bench.py",
            "--preset",
            "tiny-latent",
            "--batch-gpu",
            "2",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--precision",
            precision,
            "--gate",
            str(tmp_path / "gate"),
            "--gate-count",
            "2",
            f"--run_dir={tmp_path}/run{i}",
            "--ema.stds=[0.05]",
        ]
        env = dict(ENV, MASTER_PORT=str(free_port()))
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads([line for line in out.splitlines() if line.startswith("{")][-1]))
    (a0, a1), (b0, b1) = sorted(tuple(r["timed_window_unix"]) for r in results)
    assert a1 <= b0 + 0.05  # Disjoint timed sections.
    assert [r["precision"] for r in results] == ["bf16", "fp16"] and not any(r["gate_timed_out"] for r in results)
    assert results[1]["loss_scale"] is not None and results[0]["loss_scale"] is None
