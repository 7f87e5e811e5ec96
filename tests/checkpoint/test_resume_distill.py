"""Exact resume of distillation on 2 CPU ranks (bf16 ZeRO-1): a CD run stopped mid-way and resumed in fresh
processes, with the teacher reloaded from its file, gives the same losses and bit-identical weights, EMAs (its
target network theta- included), Adam state and compute record as an uninterrupted run. ECD keeps no state beyond
ECT's and CD's (its teacher is reloaded the same way), so it is run once, for the frozen-teacher and compute checks."""

import json
import os

import pytest
import torch

from tests.checkpoint.common import assert_states_equal, losses, train
from tests.distributed import run_ranks

pytestmark = pytest.mark.slow  # Several processes: not in the fast subset.

OBJECTIVES = ("cd", "ecd")
RESUMED = ("cd",)  # Stopped and resumed; ECD's teacher reload is CD's.
STAGE, PRECISION = 1, "bf16"  # As test_resume.py: the default engine, with bf16 teacher replicas.
SLICED = {"train.slice_nimg": 16, "checkpoint.interval_nimg": 16, "checkpoint.keep_last": 1}  # Stop at 16 of 32.
NO_CKPT = {"checkpoint.enabled": "false"}
TEACHER_FLOPS = 1.5e12  # What the teacher file records about its own training.


def _extra(objective: str, teacher: str, **more) -> dict:
    return {"ect.objective": objective, "teacher": teacher, "distill.levels": 6, "logging.sample_grid": 0, **more}


class FrozenProbe:
    """Holds the trainer (before its run) and checks the frozen networks after it: the teacher is no parameter of
    the trained module, has no gradient, stays in eval mode in the run's bf16 replica and is unchanged by training;
    CD's theta- module, gathered once more, equals the target EMA (rounded to the replica dtype)."""

    def __init__(self):
        self.trainer, self.teacher_start = None, None

    def __call__(self, trainer):
        self.trainer = trainer
        self.teacher_start = {k: v.clone() for k, v in trainer.distill.teacher.module.state_dict().items()}

    def check(self) -> dict:
        tr = self.trainer
        teacher = tr.distill.teacher.module
        trained = {id(p) for p in tr.engine.module.parameters()}
        out = {
            "teacher_trained": any(id(p) in trained or p.requires_grad for p in teacher.parameters()),
            "teacher_eval": not teacher.training,
            "teacher_dtypes": sorted({str(p.dtype) for p in teacher.parameters()}),
            "teacher_changed": any(not torch.equal(v, self.teacher_start[k]) for k, v in teacher.state_dict().items()),
        }
        target = tr.distill.target
        if target is not None:
            target.refresh()  # Collective.
            ema = tr.ema.full_state(target.profile, tr.engine.module, tr.engine.param_shapes)
            got = dict(target.module.named_parameters())
            out["target_equals_ema"] = all(torch.equal(got[n], ema[n].to(got[n].dtype)) for n in got)
        return out


def _uninterrupted_then_first_slice(rank, world_size, root, teacher):
    out = {}
    for obj in OBJECTIVES:
        probe = FrozenProbe()
        extra = _extra(obj, teacher, **NO_CKPT)
        out[f"{obj}/a"] = train(rank, world_size, f"{root}/{obj}/a", STAGE, PRECISION, extra, before_run=probe)
        out[f"{obj}/a"]["frozen"] = probe.check()
        if obj in RESUMED:
            out[f"{obj}/b1"] = train(
                rank, world_size, f"{root}/{obj}/b", STAGE, PRECISION, _extra(obj, teacher, **SLICED)
            )
    probe = FrozenProbe()  # ZeRO-3: theta- gathered from partitioned masters, bf16 replicas (fp32 parameter copy).
    extra = _extra("cd", teacher, **NO_CKPT, **{"train.total_nimg": 16, "engine.param_dtype": "fp32"})
    out["cd/zero3"] = train(rank, world_size, f"{root}/cd/zero3", 3, "fp32", extra, before_run=probe)
    out["cd/zero3"]["frozen"] = probe.check()
    return out


def _resume(rank, world_size, root, teacher):
    return {
        obj: train(rank, world_size, f"{root}/{obj}/b", STAGE, PRECISION, _extra(obj, teacher, **SLICED))
        for obj in RESUMED
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from ect_scale.networks import build_network
    from ect_scale.networks.netfile import save_network_file
    from tests.checkpoint.common import make_cfg

    root = str(tmp_path_factory.mktemp("resume_distill"))
    cfg = make_cfg(root)
    torch.manual_seed(3)
    net = build_network(cfg.network)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(0.6)  # Non-zero gains: the teacher's output depends on every layer.
    teacher = f"{root}/teacher.safetensors"
    save_network_file(teacher, net.state_dict(), cfg.network, meta={"compute": {"train_flops": TEACHER_FLOPS}})
    first = run_ranks(_uninterrupted_then_first_slice, 2, args=(root, teacher), timeout=400)
    second = run_ranks(_resume, 2, args=(root, teacher), timeout=400)
    return {"root": root, "first": first[0], "second": second[0], "fwd": _fwd_flops(cfg)}


def _fwd_flops(cfg) -> float:
    from ect_scale.networks.flops import model_stats

    return model_stats(cfg.network)["fwd_flops"]


@pytest.mark.parametrize("objective", RESUMED)
def test_stop_and_resume_is_bitwise_identical(runs, objective):
    a, b1, b2 = runs["first"][f"{objective}/a"], runs["first"][f"{objective}/b1"], runs["second"][objective]
    assert b1["end"]["nimg"] == 16 and b2["start"]["nimg"] == 16 and b2["end"]["nimg"] == 32
    la, lb = losses(f"{runs['root']}/{objective}/a"), losses(f"{runs['root']}/{objective}/b")
    assert sorted(la) == sorted(lb) == [8, 16, 24, 32]
    assert [la[n] for n in sorted(la)] == [lb[n] for n in sorted(lb)]  # Exact floats.
    assert_states_equal(a["end"]["weights"], b2["end"]["weights"])
    profiles = sorted(a["end"]["emas"])
    assert ("target-0.95" in profiles) == (objective == "cd")  # theta- is an EMA of the masters, checkpointed.
    for profile in profiles:
        assert_states_equal(a["end"]["emas"][profile], b2["end"]["emas"][profile])
    for key in ("exp_avg", "exp_avg_sq"):
        assert_states_equal(a["end"]["adam"][key], b2["end"]["adam"][key])
    if objective == "cd":  # What was restored equals what was saved, theta- included.
        assert_states_equal(b1["end"]["emas"]["target-0.95"], b2["start"]["emas"]["target-0.95"])


@pytest.mark.parametrize("run", ["cd/a", "ecd/a", "cd/zero3"])
def test_the_teacher_is_frozen_and_theta_minus_is_the_target_ema(runs, run):
    frozen = runs["first"][run]["frozen"]
    assert not frozen["teacher_trained"] and frozen["teacher_eval"] and not frozen["teacher_changed"]
    assert frozen["teacher_dtypes"] == ["torch.bfloat16"]  # bf16 runs, and ZeRO-3 (never a full fp32 copy).
    assert frozen.get("target_equals_ema", run.startswith("ecd")) is True


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_compute_record_counts_the_teacher_and_reports_its_pretraining(runs, objective):
    """Heun: 2 teacher forwards per image; CD: online 3 + theta- 1, ECD: online 4 (ECT's) — 6 forward passes of this
    size either way. The teacher's own training is reported beside the run's, never added."""
    run = os.path.join(runs["root"], objective, "b" if objective in RESUMED else "a")
    rows = [json.loads(line) for line in open(os.path.join(run, "stats.jsonl"))]
    last = rows[-1]
    assert last["Compute/train_flops"] == pytest.approx(32 * 6 * runs["fwd"], rel=1e-12)
    assert last["Compute/teacher_train_flops"] == TEACHER_FLOPS
    exported = sorted(os.listdir(os.path.join(run, "ema")))
    assert exported and not any("target" in name for name in exported)  # theta- is not exported.
