"""Elastic restart through DeepSpeed universal checkpoints (bf16 ZeRO-3, CPU): 2 ranks -> 1 rank -> 2 ranks.
At each restart the fp32 weights, every EMA (re-sliced from the consolidated shards) and the Adam moments and step
counts equal what was saved, bit for bit; training continues; a save after a universal load writes every rank's
files again (guards against DeepSpeed#7546, where ZeRO-3 saved only rank 0's model states while `load_universal`
stayed on; deepspeed 0.19.8 no longer shows it, and the checkpointer switches the flag off after the load anyway)."""

import json
import os

import pytest

from ect_scale.checkpoint.storage import staging_root
from tests.checkpoint.common import assert_states_equal, train
from tests.distributed import run_ranks

pytestmark = pytest.mark.slow  # Several processes or a full run: not in the fast subset.

STAGE, PRECISION = 3, "bf16"


def assert_restored(saved: dict, resumed: dict) -> None:
    assert resumed["nimg"] == saved["nimg"]
    assert_states_equal(saved["weights"], resumed["weights"])
    for profile in saved["emas"]:
        assert_states_equal(saved["emas"][profile], resumed["emas"][profile])
    assert saved["adam"]["steps"] == resumed["adam"]["steps"] and saved["adam"]["steps"]
    for key in ("exp_avg", "exp_avg_sq"):
        assert_states_equal(saved["adam"][key], resumed["adam"][key])


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("elastic") / "run")
    legs = []
    for world, slice_nimg in ((2, 16), (1, 8), (2, 8)):
        out = run_ranks(train, world, args=(run_dir, STAGE, PRECISION, {"train.slice_nimg": slice_nimg}), timeout=300)
        legs.append(out[0])
    return run_dir, legs


def test_two_to_one_rank(chain):
    _, (two, one, _) = chain
    assert two["end"]["nimg"] == 16
    assert_restored(two["end"], one["start"])
    assert one["end"]["nimg"] == 24 and one["state"]["steps"] == 3
    assert one["end"]["adam"]["steps"] == [3.0]


def test_one_to_two_ranks_and_complete_saves_after_universal_load(chain):
    run_dir, (_, one, two) = chain
    assert_restored(one["end"], two["start"])
    assert two["end"]["nimg"] == 32 and two["end"]["adam"]["steps"] == [4.0]
    folder = os.path.join(run_dir, "checkpoints", "ckpt-000000000032")
    files = json.load(open(os.path.join(folder, "COMPLETE")))["files"]
    for r in (0, 1):
        assert f"ds/zero_pp_rank_{r}_mp_rank_00_model_states.pt" in files
        assert f"ds/bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" in files
    assert json.load(open(os.path.join(folder, "trainer.json")))["world_size"] == 2
    one_folder = os.path.join(run_dir, "checkpoints", "ckpt-000000000024")
    assert json.load(open(os.path.join(one_folder, "trainer.json")))["world_size"] == 1
    # The universal conversions (as large as the optimizer state) were removed from the staging area after loading.
    staging = staging_root(os.path.join(run_dir, "staging"), os.path.join(run_dir, "checkpoints"))
    assert os.path.isdir(os.path.dirname(staging)) and not os.path.exists(os.path.join(staging, "universal"))
