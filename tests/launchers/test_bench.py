"""launchers/bench.py end to end on CPU: the JSON it prints is the one BENCHMARKS.md is built from."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO

ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")


def test_bench_reports_the_full_step_with_accumulation(tmp_path):
    out = tmp_path / "bench.jsonl"
    cmd = [sys.executable, "launchers/bench.py", "--preset", "tiny-latent", "--batch-gpu", "2", "--accum", "2",
           "--steps", "2", "--warmup", "1", "--max-memory-gib", "1", "--out", str(out), "--ema.stds=[0.05]"]
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
