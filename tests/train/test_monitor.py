"""What the terminal and the logs show: status lines with total and ETA, the diffusion teacher without ECT fields,
skipped shards, the end-of-run summary, and the config table's data row."""

import os

import pytest

from ect_scale.config import load_config
from ect_scale.train.monitor import Monitor, duration, status_line, summary_lines
from ect_scale.train.summary import data_description
from tests.conftest import REPO

SCALARS = {
    "Loss/mean": 0.25,
    "ECT/stage": 2,
    "ECT/dt_over_t": 0.0625,
    "Optim/lr": 1e-3,
    "Grad/norm": 1.5,
    "Throughput/img_per_sec": 100.0,
    "Timing/data_wait_frac": 0.01,
    "Progress/skipped_steps": 1,
}


def test_plain_status_lines_have_total_and_eta():
    line = status_line(12.8, SCALARS, total_kimg=25.6, eta_sec=3723)
    assert line.startswith("kimg 12.8/25.6 ") and line.endswith("eta 1:02:03")
    assert "stage 2" in line and "dt/t 0.06250" in line and "bad-shards" not in line
    assert status_line(1.0, SCALARS).endswith("eta -")


def test_the_diffusion_teacher_shows_no_ect_fields_and_skipped_shards_show():
    line = status_line(12.8, {**SCALARS, "Data/corrupt_shards_skipped": 3.0}, 25.6, 10, ect=False)
    assert "stage" not in line and "dt/t" not in line and "bad-shards 3 " in line


def test_durations():
    assert [duration(s) for s in (0, 59.6, 3600, 90061)] == ["0:00:00", "0:01:00", "1:00:00", "1-1:01:01"]


def test_the_summary_says_what_was_done_and_where_it_is():
    lines = summary_lines(
        nimg=25600,
        total_nimg=25600,
        session_nimg=12800,
        session_sec=100,
        elapsed_sec=190,
        skipped_steps=2,
        shards_skipped=1,
        places=[("EMAs", "runs/x/ema"), ("TensorBoard", "tb")],
    )
    assert lines[0] == (
        "Finished: 25,600 images. This session: 12,800 images in 0:01:40 (128.0 img/s); training "
        "time 0:03:10 in total; 2 skipped steps, 1 shards skipped."
    )
    assert lines[1:] == ["  EMAs         runs/x/ema", "  TensorBoard  tb"]
    stopped = summary_lines(
        nimg=6400,
        total_nimg=25600,
        session_nimg=6400,
        session_sec=10,
        elapsed_sec=10,
        skipped_steps=0,
        shards_skipped=None,
        places=[],
    )
    assert stopped[0].startswith("Stopped at 6,400 of 25,600 images: re-run the same command to continue.")


@pytest.mark.parametrize("objective,label", [("diffusion", "EDM2 diffusion"), ("ect", "ECT")])
def test_the_progress_bar_names_the_objective(tmp_path, objective, label):
    cfg = load_config(
        None,
        [
            "--data.kind=synthetic",
            f"--ect.objective={objective}",
            "--logging.progress=rich",
            "--logging.tensorboard=false",
            "--logging.jsonl=false",
        ],
    )
    monitor = Monitor(str(tmp_path), cfg.logging, 25600, ect_stages=cfg.ect.objective != "diffusion")
    monitor.start(0)
    try:
        assert monitor.progress.columns[0].text_format == f"[bold]{label}"
    finally:
        monitor.close()


def test_the_data_row_of_synthetic_runs_says_synthetic():
    recipe = os.path.join(REPO, "configs", "ect-img512-s.yaml")
    cfg = load_config(recipe, ["--data.kind=synthetic", "--data.synthetic_resolution=64"])
    assert data_description(cfg.data) == "synthetic (sd-vae, 64px, 1000 classes)"
    assert data_description(load_config(recipe).data).startswith("s3://YOUR-BUCKET/")
