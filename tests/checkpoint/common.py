"""Shared pieces of the checkpoint tests: a trainer run on N CPU ranks with a deterministic test stream."""

from __future__ import annotations

import json
import os

import torch

from tests.engine.common import ListStream, tiny_cfg

# 4 steps of 8 images; every step logged; checkpoints every 2 steps; two small EMAs plus the traditional one.
BASE = {
    "train.total_nimg": 32,
    "train.status_nimg": 8,
    "logging.progress": "plain",
    "logging.tensorboard": "false",
    "checkpoint.interval_nimg": 16,
    "ema.stds": "[0.05,0.1]",
    "ema.export_nimg": 0,
    "ema.export_dtype": "float32",
    "checkpoint.convert_workers": 1,
}
# Background saves, the GPU default (`checkpoint.async_save: auto` is synchronous on CPUs): the checkpoint tests
# (train(), test_bad_inputs, test_s3) run them.
ASYNC = {"checkpoint.async_save": "true"}


def make_cfg(run_dir: str, stage: int = 1, precision: str = "fp32", batch_gpu: int = 2, **extra):
    staging = {"checkpoint.staging_dir": os.path.join(run_dir, "staging")}  # Not the shared $TMPDIR default.
    return tiny_cfg(
        stage, precision, batch_size=8, batch_gpu=batch_gpu, run_dir=run_dir, **{**BASE, **staging, **extra}
    )


def snapshot(trainer) -> dict:
    """Everything a resume must restore, as world-size-independent full tensors (collective)."""
    return {
        "nimg": trainer.state.nimg,
        "weights": trainer.engine.full_state(),
        "emas": {p: trainer.outputs.ema_state(p) for p in trainer.ema.profiles},
        "adam": adam_state(trainer),
        "stream": trainer.stream.state_dict()["index"],
    }


def adam_state(trainer) -> dict:
    """Full Adam moments per parameter, gathered from the optimizer's flat partitions through the master-weight
    layout (collective), plus the step counts. (DeepSpeed's safe_get_full_optimizer_state fails on BF16_Optimizer
    until the first step after a load re-links its fragments.)"""
    opt, master = trainer.engine._inner, trainer.engine.master
    flats = master.flats()
    if not all(f in opt.state and "exp_avg" in opt.state[f] for f in flats):
        return {"steps": []}
    out = {k: master.gather(sources=[opt.state[f][k] for f in flats]) for k in ("exp_avg", "exp_avg_sq")}
    out["steps"] = sorted({float(opt.state[f]["step"]) for f in flats})
    return out


def train(
    rank: int,
    world_size: int,
    run_dir: str,
    stage: int = 1,
    precision: str = "fp32",
    extra: dict | None = None,
    batch_gpu: int | None = None,
    before_run=None,
) -> dict:
    """Build a Trainer (resuming if a checkpoint exists), run it; rank 0 returns snapshots at start and end."""
    from ect_scale.train.trainer import Trainer

    bg = batch_gpu or 2
    cfg = make_cfg(run_dir, stage, precision, bg, **{**ASYNC, **(extra or {})})
    trainer = Trainer(cfg, stream=ListStream(rank, bg))
    start = snapshot(trainer)
    if before_run is not None:
        before_run(trainer)
    state = trainer.run()
    end = snapshot(trainer)
    reports = [r.__dict__ for r in trainer.checkpointer.reports] if trainer.checkpointer else []
    out = {"state": state.state_dict(), "stream": trainer.stream.state_dict()["index"], "reports": reports}
    return {**out, "start": start, "end": end} if rank == 0 else out


def losses(run_dir: str) -> dict[int, float]:
    """nimg -> Loss/mean from stats.jsonl (a resumed run appends; later rows win)."""
    out = {}
    with open(os.path.join(run_dir, "stats.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out[round(row["kimg"] * 1000)] = row["Loss/mean"]
    return out


def assert_states_equal(a: dict, b: dict, exact: bool = True, tol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), (name, float((a[name] - b[name]).abs().max()))
        else:
            torch.testing.assert_close(a[name], b[name], rtol=tol, atol=tol, msg=name)


def load_tool(name: str):
    """Import tools/<name>.py as a module (the tools folder is not a package)."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location(f"ect_tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
