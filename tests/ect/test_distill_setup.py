"""Setting up a distillation run: the teacher/guide options and their one-line errors (config, --dry-run checks,
trainer start), where the frozen networks live (dtype rule), the resume-checked fields, and the ECD recipes'
sources."""

import glob
import os
import sys

import pytest
import torch

from ect_scale.config import ConfigError, NetworkConfig, from_dict, immutable_fields, load_config
from ect_scale.config.sources import file_unsourced_options, unsourced_options
from ect_scale.networks import build_network
from ect_scale.networks.netfile import NetworkFileError, save_network_file
from ect_scale.train.preflight import check_run
from ect_scale.train.teacher import check_fit, replica_dtype, target_profile
from tests.conftest import REPO

TINY = ["--network.preset=tiny-latent", "--data.kind=synthetic", "--checkpoint.enabled=false"]


def _net_file(path, **fields):
    config = from_dict(NetworkConfig, {"preset": "tiny-latent", **fields}, "network")
    save_network_file(str(path), build_network(config).state_dict(), config)
    return str(path)


@pytest.mark.parametrize(
    "args, option, fragment",
    [
        (["--ect.objective=cd"], "teacher", "distills a teacher, but no teacher file is set"),
        (["--teacher=t.safetensors"], "teacher", "ect.objective=ect uses no teacher or guide network"),
        (["--ect.objective=ecd", "--teacher=t", "--distill.guidance=2"], "distill.guidance", "needs a guide network"),
        (["--ect.objective=ecd", "--teacher=t", "--guide=g"], "guide", "has no effect at distill.guidance=1"),
        (["--ect.objective=cd", "--teacher=t", "--ect.learned_uncertainty=true"], "ect.learned_uncertainty", "cd"),
        (["--ect.objective=cd", "--teacher=t", "--distill.target_ema=1"], "distill.target_ema", "[0, 1)"),
        (["--ect.objective=cd", "--teacher=t", "--distill.distance=lpips"], "distill.distance", "cannot download"),
    ],
)
def test_distillation_options_are_checked(args, option, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, TINY + args)
    assert str(e.value).startswith(f"{option}: ") and fragment in str(e.value) and ". Fix: " in str(e.value)


def test_resume_checks_distill_only_for_distillation_runs():
    """ECT checkpoints written before the distill section existed stay resumable: their immutable fields are the
    same; a distillation run's checkpoint records the distill section."""
    ect = immutable_fields(load_config(None, TINY))
    assert not any(k.startswith("distill.") for k in ect)
    cd = immutable_fields(load_config(None, TINY + ["--ect.objective=cd", "--teacher=t"]))
    assert cd["distill.target_ema"] == 0.95 and cd["distill.levels"] == 18 and cd["ect.objective"] == "cd"
    assert set(cd) - set(ect) == {k for k in cd if k.startswith("distill.")}
    assert target_profile(0.9999432189950708) == "target-0.9999432189950708"  # beta parsed back exactly


def test_teacher_must_draw_the_runs_data(tmp_path):
    run = from_dict(NetworkConfig, {"preset": "tiny-latent"}, "network")
    bigger = from_dict(NetworkConfig, {"preset": "tiny-latent", "model_channels": 32}, "network")
    check_fit(bigger, run, "teacher", "t")  # Another size is fine.
    uncond = from_dict(NetworkConfig, {"preset": "tiny-latent", "label_dim": 0}, "network")
    check_fit(uncond, run, "guide", "g")  # An unconditional guide (classifier-free guidance) is fine ...
    with pytest.raises(NetworkFileError, match=r"^teacher: t does not fit .*label_dim \(classes\): file=0 run=10"):
        check_fit(uncond, run, "teacher", "t")  # ... an unconditional teacher for a conditional run is not.
    wrong = from_dict(NetworkConfig, {"preset": "tiny-latent", "img_resolution": 32, "img_channels": 3}, "network")
    with pytest.raises(NetworkFileError, match=r"img_resolution: file=32 run=16; img_channels: file=3 run=4\)\. Fix:"):
        check_fit(wrong, run, "teacher", "t")


def test_frozen_networks_are_never_a_full_fp32_copy_under_zero3():
    def cfg(*args):
        return load_config(None, TINY + ["--ect.objective=ecd", "--teacher=t", *args])

    assert replica_dtype(cfg("--engine.precision=bf16"), 8) == torch.bfloat16  # The run's bf16 parameter copy.
    assert replica_dtype(cfg("--engine.precision=tf32"), 8) == torch.float32
    assert replica_dtype(cfg("--engine.precision=tf32", "--engine.zero_stage=3"), 8) == torch.bfloat16
    assert replica_dtype(cfg("--engine.precision=tf32", "--engine.zero_stage=3"), 1) == torch.float32
    assert replica_dtype(cfg("--distill.teacher_dtype=float16"), 8) == torch.float16
    with pytest.raises(ConfigError, match="^distill.teacher_dtype: float32 under ZeRO-3 .* Fix: "):
        replica_dtype(cfg("--distill.teacher_dtype=float32", "--engine.zero_stage=3"), 2)


def test_dry_run_names_a_missing_or_unfit_teacher(tmp_path):
    base = TINY + ["--ect.objective=ecd", f"--run_dir={tmp_path}/run"]
    problems = check_run(load_config(None, base + [f"--teacher={tmp_path}/none.safetensors"]))
    assert len(problems) == 1 and problems[0].startswith(f"teacher: {tmp_path}/none.safetensors does not exist")
    unfit = _net_file(tmp_path / "unfit.safetensors", img_channels=3)
    problems = check_run(load_config(None, base + [f"--teacher={unfit}"]))
    assert len(problems) == 1 and problems[0].startswith(f"teacher: {unfit} does not fit this run's network")
    fit = _net_file(tmp_path / "fit.safetensors", model_channels=32)
    assert check_run(load_config(None, base + [f"--teacher={fit}"])) == []
    guide = _net_file(tmp_path / "guide.safetensors", img_resolution=8)
    problems = check_run(load_config(None, base + [f"--teacher={fit}", f"--guide={guide}", "--distill.guidance=2"]))
    assert [p.split(":")[0] for p in problems] == ["guide"]


@pytest.mark.slow  # One launcher subprocess (~10 s).
def test_trainer_start_stops_an_unfit_teacher_with_one_line(tmp_path):
    from tests.launchers.common import assert_one_line_error, run

    unfit = _net_file(tmp_path / "unfit.safetensors", label_dim=0)
    cmd = [sys.executable, "launchers/train.py", "--config", "configs/demo-digits-teacher.yaml"] + TINY
    args = ["--ect.objective=cd", "--ect.learned_uncertainty=false", f"--teacher={unfit}", f"--run_dir={tmp_path}/run"]
    proc = run(cmd + args)
    line = assert_one_line_error(proc, f"error: teacher: {unfit} does not fit this run's network and data")
    assert "label_dim (classes): file=0 run=10" in line
    assert not os.path.exists(tmp_path / "run" / "checkpoints")  # Stopped before the engine existed.


ECD_RECIPES = sorted(glob.glob(os.path.join(REPO, "configs", "ecd-*.yaml")))


@pytest.mark.parametrize("path", ECD_RECIPES, ids=os.path.basename)
def test_ecd_recipes_source_every_value(path):
    cfg = load_config(path)
    assert cfg.ect.objective == "ecd" and cfg.teacher and cfg.guide and cfg.distill.guidance == 2.05
    assert unsourced_options(cfg) == [] and file_unsourced_options(path) == []


def test_the_cmt_recipe_states_sony_cmts_settings():
    cfg = load_config(os.path.join(REPO, "configs", "ecd-img512-xxl-cmt.yaml"))
    assert (cfg.ect.q, cfg.ect.ratio_limit, cfg.optim.lr, cfg.optim.decay_nimg) == (1024, None, 1e-6, 0)
    assert (cfg.train.batch_size, cfg.train.batch_gpu, cfg.ema.stds, cfg.ema.beta) == (128, 16, [], 0.9999)
    assert cfg.engine.precision == "tf32" and cfg.network.dropout == 0.0 and cfg.distill.solver == "heun"
    assert cfg.sources["train.total_nimg"].startswith("INFERRED") and "run_ecd_512.sh" in cfg.sources["ect.q"]
    problems = check_run(cfg)
    assert any(
        p.startswith("init: pretrained/YOUR-cmt-img512-xxl-midtrained.safetensors is a placeholder") for p in problems
    )
