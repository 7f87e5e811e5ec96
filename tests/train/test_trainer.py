"""The training loop on 2 CPU ranks: non-finite guard, schedules in images, monitoring output, EMA export."""

import json
import math
import os

import pytest
import torch

from tests.distributed import run_cases, run_ranks
from tests.engine.common import ListStream, tiny_cfg

pytestmark = pytest.mark.slow  # Several processes or a full run: not in the fast subset.


def _run_trainer(rank, world_size, run_dir, batch_gpu, nan_at, extra):
    from ect_scale.train.trainer import Trainer

    cfg = tiny_cfg(1, "fp32", batch_size=8, batch_gpu=batch_gpu, run_dir=run_dir, **extra)
    stream = ListStream(rank, batch_gpu, nan_at=nan_at if rank == 1 else -1)
    trainer = Trainer(cfg, stream=stream)
    before = trainer.engine.full_state()
    state = trainer.run()
    after = trainer.engine.full_state()
    return {
        "state": state.state_dict(),
        "before": before if rank == 0 else None,
        "after": after if rank == 0 else None,
        "ema_dir": sorted(os.listdir(os.path.join(run_dir, "ema"))) if rank == 0 else None,
    }


COMMON = {
    "checkpoint.enabled": "false",
    "train.total_nimg": 32,
    "train.status_nimg": 8,
    "logging.progress": "plain",
    "ema.export_nimg": 16,
    "ema.stds": "[0.05,0.1]",
}


SCHEDULES = dict(COMMON, **{"optim.decay_nimg": 8, "ect.stage_nimg": 16})


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The 2-rank runs of this file in one pair of processes: a NaN run and the schedules run."""
    root = tmp_path_factory.mktemp("trainer")
    cases = {
        # Rank 1's 2nd micro-batch (step 0, round 1) holds a NaN.
        "nan": (str(root / "nan"), 2, 1, dict(COMMON, **{"train.total_nimg": 8})),
        "schedules": (str(root / "w2"), 2, -1, SCHEDULES),
    }
    return root, run_cases(_run_trainer, cases)


def test_nonfinite_loss_on_one_rank_skips_the_step_everywhere(two_ranks):
    root, runs = two_ranks
    results = runs["nan"]  # Step 0 is skipped on both ranks, later steps apply.
    for r in results:
        assert r["state"]["skipped_steps"] == 1 and r["state"]["nimg"] == 8
    for name, v in results[0]["before"].items():
        assert torch.equal(results[0]["after"][name], v), name  # Nothing reached the weights.
    stats = [json.loads(line) for line in open(root / "nan" / "stats.jsonl")]
    assert stats[-1]["Progress/skipped_steps"] == 1


def _stats(path):
    return {round(row["kimg"] * 1000): row for row in map(json.loads, open(path))}


def test_schedules_count_images_across_world_sizes_and_micro_batches(tmp_path, two_ranks):
    root, runs = two_ranks
    two = runs["schedules"]
    one = run_ranks(_run_trainer, 1, args=(str(tmp_path / "w1"), 4, -1, SCHEDULES), timeout=300)
    a, b = _stats(root / "w2" / "stats.jsonl"), _stats(tmp_path / "w1" / "stats.jsonl")
    assert sorted(a) == sorted(b) == [8, 16, 24, 32]
    for nimg in a:
        for key in ("Optim/lr", "ECT/stage", "ECT/ratio"):
            assert a[nimg][key] == b[nimg][key], (nimg, key)
    assert a[32]["ECT/stage"] == 1 and a[8]["Optim/lr"] == pytest.approx(0.01)
    assert a[24]["Optim/lr"] == pytest.approx(0.01 / math.sqrt(2))
    # Compute: every row carries the training FLOPs so far, counted from the network's own FLOP count (ECT: online
    # forward + backward + target forward = 4 forward passes per image), and device-hours = wall time x ranks.
    from ect_scale.config import NetworkConfig, from_dict
    from ect_scale.networks.flops import model_stats

    fwd = model_stats(from_dict(NetworkConfig, {"preset": "tiny-latent"}, "network"))["fwd_flops"]
    for nimg in a:
        assert a[nimg]["Compute/train_flops"] == b[nimg]["Compute/train_flops"] == pytest.approx(4 * fwd * nimg)
    assert 0 < a[8]["Compute/wall_hours"] < a[32]["Compute/wall_hours"]
    assert a[32]["Compute/device_hours"] == pytest.approx(2 * a[32]["Compute/wall_hours"], rel=1e-6)
    assert b[32]["Compute/device_hours"] == pytest.approx(b[32]["Compute/wall_hours"], rel=1e-6)
    # Monitoring: TensorBoard events and per-bucket losses exist; EMAs were exported world-size independently.
    assert any(f.startswith("events.out") for f in os.listdir(root / "w2" / "tensorboard"))
    assert any(k.startswith("Loss/t_") for k in a[8])
    assert (
        two[0]["ema_dir"]
        == one[0]["ema_dir"]
        == [
            "ema-0000000-beta-0.9999.safetensors",
            "ema-0000000-power-0.050.safetensors",
            "ema-0000000-power-0.100.safetensors",
        ]
    )
