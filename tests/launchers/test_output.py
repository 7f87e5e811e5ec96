"""What a user reads during and after a run (one training session stopped at a slice end, then resumed; one shard
truncated): status lines with total and ETA (no ECT fields for the diffusion teacher), skipped shards named and
counted, the exact-resume line, announced sample grids, the end-of-run summary, and shareable file modes."""

import os
import re
import stat

import pytest

from tests.launchers.common import TEACHER, make_digits, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("output")
    manifest = make_digits(str(root / "digits"))
    shard = root / "digits" / "shard-000002.tar"
    blob = shard.read_bytes()
    shard.write_bytes(blob[: len(blob) * 2 // 5])  # Truncated mid-sample: skipped and counted, training goes on.
    args = TEACHER + [
        f"--data.url={manifest}",
        f"--run_dir={root}/run",
        "--train.total_nimg=256",
        "--train.status_nimg=64",
        "--train.slice_nimg=128",
        "--checkpoint.interval_nimg=128",
        "--logging.sample_grid=4",
        "--logging.progress=plain",
        "--data.num_workers=1",
    ]
    first = run(args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = run(args)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"root": root, "manifest": manifest, "shard": str(shard), "first": first, "second": second}


def _status(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("kimg ")]


def test_status_lines_show_total_and_eta_and_no_ect_fields_for_the_teacher(session):
    lines = _status(session["first"]) + _status(session["second"])
    assert len(lines) == 4
    assert all(re.match(r"kimg 0\.\d/0\.3 ", line) and re.search(r"eta \d+:\d\d:\d\d$", line) for line in lines)
    assert not any("stage" in line or "dt/t" in line for line in lines)
    assert "data       " + session["manifest"] in session["first"].stdout  # The config table's data row.


def test_a_skipped_shard_is_named_and_counted(session):
    first = session["first"]
    assert f"data: skipping the rest of shard {session['shard']} (" in first.stderr
    assert "object at 0x" not in first.stdout + first.stderr
    assert "bad-shards 1 " in _status(first)[-1]
    assert re.search(r"0 skipped steps, [1-9]\d* shards skipped\.", session["second"].stdout)


def test_the_resume_is_announced(session):
    assert re.search(
        r"^data: exact resume at epoch 0, batch 4/\d+ \(1 ranks x 1 workers", session["second"].stdout, re.M
    )


def test_sample_grids_are_announced_once_per_export(session):
    for proc in (session["first"], session["second"]):
        assert proc.stdout.count("samples: drawing 4 samples of EMA power-0.100") == 1
        assert re.search(r"^samples: done in \d+\.\d s$", proc.stdout, re.M)


def test_the_end_of_the_run_says_what_was_done_and_where_it_is(session):
    run_dir = os.path.join(session["root"], "run")
    first, second = session["first"].stdout, session["second"].stdout
    assert "Stopped at 128 of 256 images: re-run the same command to continue." in first
    lines = second[second.index("Finished: 256 images.") :].splitlines()
    assert re.match(
        r"Finished: 256 images\. This session: 128 images in 0:\d\d:\d\d \(\d+\.\d img/s\); training time "
        r"0:\d\d:\d\d in total; 0 skipped steps",
        lines[0],
    )
    assert lines[1:5] == [
        f"  EMAs         {run_dir}/ema  (power-0.100)",
        f"  samples      {run_dir}/samples",
        f"  TensorBoard  tensorboard --logdir {run_dir}/tensorboard",
        f"  checkpoints  {run_dir}/checkpoints",
    ]


def test_files_are_readable_by_others_sharing_the_folders(session):
    mask = os.umask(0o022)
    os.umask(mask)
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    checked = 0
    for folder, _dirs, files in os.walk(session["root"]):
        if folder != str(session["root"]):  # pytest's own temporary folder is private.
            assert stat.S_IMODE(os.stat(folder).st_mode) == dir_mode, folder
        for name in files:
            if name.startswith("zero_to_"):  # DeepSpeed's recovery scripts, copied with their own mode.
                continue
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == file_mode, os.path.join(folder, name)
            checked += 1
    assert checked > 20  # Shards, records, manifest, config, stats, events, checkpoints, rank files, EMAs, PNGs.
