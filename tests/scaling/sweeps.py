"""Small sweeps for the tests: a tiny ECT recipe on synthetic 8x8 RGB data with the offline metric (a random
classifier and reference statistics written to disk in the real formats), teacher files, and fabricated run folders
(stats.jsonl records, checkpoint markers, launch records) for the collection tests."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import yaml

from ect_scale.checkpoint.layout import MARKER, tag_for

RECIPE = {
    "description": "test sweep point",
    "run_dir": "unset",
    "network": {"preset": "demo-digits8-w8", "img_channels": 3, "dropout": 0.1, "dropout_res": 8},
    "ect": {"q": 4, "stage_nimg": 256, "c": 0.01, "weighting": "inv_dt", "P_mean": -1.1, "P_std": 2.0, "t_mid": [6.0]},
    "train": {"total_nimg": 1024, "batch_size": 64, "batch_gpu": 64, "status_nimg": 256},
    "optim": {"lr": 0.001, "decay_nimg": 0, "rampup_nimg": 0},
    "ema": {"stds": [0.05], "beta": None, "export_nimg": 0, "export_dtype": "float32"},
    "engine": {"zero_stage": 1, "precision": "fp32"},
    "data": {
        "kind": "synthetic",
        "synthetic_encoder": "pixels",
        "synthetic_resolution": 8,
        "synthetic_label_dim": 10,
        "num_workers": 0,
    },
    "checkpoint": {"interval_nimg": 64, "keep_last": 1},
    "eval": {"metrics": ["fd_classifier"], "num_samples": 64, "batch_gpu": 64, "grid_size": 0},
    "logging": {"sample_grid": 0, "tensorboard": False, "progress": "plain"},
}


def metric_files(root: str) -> dict[str, str]:
    """A random digit classifier (8 features) and reference statistics in its features."""
    from ect_scale.eval.classifier import SmallClassifier, save_classifier
    from ect_scale.eval.refs import save_reference
    from ect_scale.eval.stats import GaussianStats

    torch.manual_seed(0)
    clf = os.path.join(root, "classifier.safetensors")
    save_classifier(clf, SmallClassifier(num_classes=10, width=4, feature_dim=8))
    feats = np.random.default_rng(0).normal(size=(200, 8))
    ref = os.path.join(root, "ref.npz")
    save_reference(ref, {"fd_classifier": GaussianStats(feats.mean(0), np.cov(feats, rowvar=False), 200)})
    return {"classifier": clf, "ref": ref}


def teacher_file(path: str, preset: str) -> str:
    """A random network of `preset` (3 channels) saved as a network file: a stand-in teacher."""
    from ect_scale.config import NetworkConfig, from_dict
    from ect_scale.networks.netfile import save_network_file
    from ect_scale.networks.precond import Precond

    cfg = from_dict(NetworkConfig, {"preset": preset, "img_channels": 3}, "network")
    torch.manual_seed(1)
    net = Precond(cfg)
    save_network_file(path, net.state_dict(), cfg, meta={"source": "test", "compute": {"nimg": 64, "train_flops": 1e9}})
    return path


def write_sweep(root: str, teachers: bool = True, **changes) -> str:
    """A recipe and a 2x2 sweep (sizes w8/w16, budgets 256/1024, seed 0, mode both) under `root`; `changes` update
    the sweep's keys. Returns the sweep file's path."""
    files = metric_files(root)
    recipe = dict(RECIPE, eval={**RECIPE["eval"], "classifier_path": files["classifier"], "ref_stats": files["ref"]})
    recipe_path = os.path.join(root, "recipe.yaml")
    with open(recipe_path, "w") as f:
        yaml.safe_dump(recipe, f)
    sizes = []
    for name in ("w8", "w16"):
        init = os.path.join(root, "teachers", f"{name}.safetensors")
        if teachers:
            teacher_file(init, f"demo-digits8-{name}")
        sizes.append({"name": name, "preset": f"demo-digits8-{name}", "init": init})
    sweep = {
        "description": "test 2x2 sweep",
        "recipe": recipe_path,
        "out_dir": os.path.join(root, "points"),
        "mode": "both",
        "sizes": sizes,
        "budgets_nimg": [256, 1024],
        "seeds": [0],
        "stages": 4,
        "launcher": {"kind": "python", "env": {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}},
        "report": {"n_boot": 50},
        **changes,
    }
    path = os.path.join(root, "sweep.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(sweep, f)
    return path


def fake_run(run_dir: str, records: dict[int, dict], done_nimg: int = 0, logged_nimg: int = 0, torn: bool = False):
    """A run folder as the trainer leaves it: stats.jsonl (status rows up to `logged_nimg`, evaluation `records` at
    their nimg, a torn last line with `torn`) and a complete checkpoint at `done_nimg` (0: none)."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "stats.jsonl"), "a") as f:
        for nimg in range(64, logged_nimg + 1, 64):
            f.write(json.dumps({"kimg": nimg / 1000, "Loss/mean": 1.0}) + "\n")
        for nimg, values in records.items():
            f.write(json.dumps({"kimg": nimg / 1000, **values}) + "\n")
        if torn:
            f.write('{"kimg": 0.9, "FD_classif')
    if done_nimg:
        folder = os.path.join(run_dir, "checkpoints", tag_for(done_nimg))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, MARKER), "w") as f:
            f.write("{}")


def record(fd1: float, fd2: float, nimg: int, flops_per_img: float = 4.0e7) -> dict:
    """An evaluation record at `nimg` images of EMA power-0.050, with the compute the trainer logs there."""
    return {
        "FD_classifier/1step/power-0.050": fd1,
        "FD_classifier/2step/power-0.050": fd2,
        "Timing/eval_sec": 0.5,
        "Compute/train_flops": flops_per_img * nimg,
        "Compute/device_hours": nimg / 3.6e6,
        "Compute/wall_hours": nimg / 7.2e6,
        "Compute/init_train_flops": 1e9,
    }
