"""Exact resume on 2 CPU ranks (bf16 ZeRO-1, the default engine): a run stopped mid-way and resumed in fresh
processes gives the same loss sequence and bit-identical weights, EMAs and Adam state as an uninterrupted run.
Also: retention, the `latest` pointer, and tools/export.py on the resulting sharded checkpoint."""

import json
import os

import pytest
import torch

from tests.checkpoint.common import assert_states_equal, load_tool, losses, train
from tests.distributed import run_ranks

pytestmark = pytest.mark.slow  # Several processes or a full run: not in the fast subset.

STAGE, PRECISION = 1, "bf16"
SLICED = {
    "train.slice_nimg": 16,
    "checkpoint.interval_nimg": 8,
    "checkpoint.keep_last": 1,
    "checkpoint.keep_every_nimg": 16,
}


def _uninterrupted_then_first_slice(rank, world_size, root):
    a = train(rank, world_size, f"{root}/a", STAGE, PRECISION, {"checkpoint.enabled": "false"})
    b = train(rank, world_size, f"{root}/b", STAGE, PRECISION, SLICED)
    return {"a": a, "b": b}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("resume"))
    first = run_ranks(_uninterrupted_then_first_slice, 2, args=(root,), timeout=300)
    second = run_ranks(train, 2, args=(f"{root}/b", STAGE, PRECISION, SLICED), timeout=300)
    return {"root": root, "a": first[0]["a"], "b1": first[0]["b"], "b2": second[0], "b2_rank1": second[1]}


def test_stop_and_resume_is_bitwise_identical(runs):
    a, b1, b2 = runs["a"], runs["b1"], runs["b2"]
    assert b1["end"]["nimg"] == 16 and b2["start"]["nimg"] == 16 and b2["end"]["nimg"] == 32
    assert b2["state"]["steps"] == a["state"]["steps"] == 4
    assert b2["start"]["stream"] == b1["end"]["stream"] and runs["b2_rank1"]["stream"] == b2["stream"]
    la, lb = losses(f"{runs['root']}/a"), losses(f"{runs['root']}/b")
    assert sorted(la) == sorted(lb) == [8, 16, 24, 32]
    assert [la[n] for n in sorted(la)] == [lb[n] for n in sorted(lb)]  # Exact floats, not approx.
    assert_states_equal(a["end"]["weights"], b2["end"]["weights"])
    for profile in a["end"]["emas"]:
        assert_states_equal(a["end"]["emas"][profile], b2["end"]["emas"][profile])
    for key in ("exp_avg", "exp_avg_sq"):
        assert_states_equal(a["end"]["adam"][key], b2["end"]["adam"][key])
    assert a["end"]["adam"]["steps"] == b2["end"]["adam"]["steps"] == [4.0]
    # What was restored equals what was saved.
    assert_states_equal(b1["end"]["weights"], b2["start"]["weights"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert_states_equal(b1["end"]["adam"][key], b2["start"]["adam"][key])


def test_retention_and_latest(runs):
    ckpts = os.path.join(runs["root"], "b", "checkpoints")
    # keep_last=1 plus the first checkpoint at or after every 16 images: 8 and 24 are pruned.
    assert sorted(d for d in os.listdir(ckpts) if d.startswith("ckpt-")) == ["ckpt-000000000016", "ckpt-000000000032"]
    assert open(os.path.join(ckpts, "latest")).read().strip() == "ckpt-000000000032"
    folder = os.path.join(ckpts, "ckpt-000000000032")
    marker = json.load(open(os.path.join(folder, "COMPLETE")))
    assert marker["world_size"] == 2 and marker["nimg"] == 32
    expected = {"trainer.json", "rank-00000.safetensors", "rank-00001.safetensors", "ds/mp_rank_00_model_states.pt"}
    expected |= {f"ds/bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)}
    assert expected <= set(marker["files"])
    for rel, rec in marker["files"].items():
        assert os.path.getsize(os.path.join(folder, rel)) == rec["size"], rel
    ds_state = torch.load(os.path.join(folder, "ds", "mp_rank_00_model_states.pt"), weights_only=False)
    assert "universal_checkpoint_info" in ds_state  # ds_to_universal needs it: every checkpoint stays convertible.
    assert [r["ok"] for r in runs["b2"]["reports"]] == [True, True]


def test_export_tool_writes_loadable_consolidated_networks(runs, tmp_path):
    from ect_scale.networks.netfile import load_network_file

    export_main = load_tool("export").main

    out = str(tmp_path) + "/"
    assert export_main([os.path.join(runs["root"], "b"), "--what", "all", "--out", out]) == 0
    end = runs["b2"]["end"]
    for what, ref in [("online", end["weights"])] + list(end["emas"].items()):
        net, meta = load_network_file(os.path.join(out, f"network-0000000-{what}.safetensors"))
        assert meta["nimg"] == 32 and meta["ema"] == (None if what == "online" else what)
        assert_states_equal(ref, {k: v for k, v in net.state_dict().items()})
    # An older checkpoint by tag, one EMA to an explicit file name.
    path = str(tmp_path / "ema16.safetensors")
    assert (
        export_main(
            [os.path.join(runs["root"], "b"), "--tag", "ckpt-000000000016", "--what", "power-0.050", "--out", path]
        )
        == 0
    )
    net, meta = load_network_file(path)
    assert meta["nimg"] == 16
    assert_states_equal(runs["b1"]["end"]["emas"]["power-0.050"], net.state_dict())
    assert export_main([os.path.join(runs["root"], "b"), "--what", "power-0.123", "--out", out]) == 2
