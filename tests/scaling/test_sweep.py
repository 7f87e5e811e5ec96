"""Sweep files: validation errors that name the key and a fix (one line, exit 2 through the tool), the plan of
runs and points each mode makes, the shipped sweep files, and `eval.at_nimg`."""

from __future__ import annotations

import os

import pytest
import yaml

from ect_scale.config import load_config
from ect_scale.config.base import ConfigError
from ect_scale.scaling.plan import build_plan
from ect_scale.scaling.sweep import load_sweep
from ect_scale.train.outputs import EvalSchedule
from tests.conftest import REPO, load_script
from tests.scaling.sweeps import write_sweep


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    return write_sweep(str(tmp_path_factory.mktemp("sweep")), teachers=False)


def _variant(path: str, tmp_path, **changes) -> str:
    with open(path) as f:
        raw = yaml.safe_load(f)
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    out = str(tmp_path / "variant.yaml")
    with open(out, "w") as f:
        yaml.safe_dump(raw, f)
    return out


def test_plan_of_each_mode(sweep_file, tmp_path):
    plan = build_plan(load_sweep(sweep_file))  # mode both: separate runs, the largest also evaluated along.
    assert [(r.size, r.budget_nimg, r.eval_nimg) for r in plan.runs] == [
        ("w8", 256, (256,)),
        ("w8", 1024, (256, 1024)),
        ("w16", 256, (256,)),
        ("w16", 1024, (256, 1024)),
    ]
    small, large = plan.runs[0].cfg, plan.runs[1].cfg
    assert (small.ect.stage_nimg, large.ect.stage_nimg) == (64, 256)  # budget / 4 stages
    assert (
        small.train.total_nimg == 256
        and small.network.model_channels == 8
        and plan.runs[2].cfg.network.model_channels == 16
    )
    assert (small.checkpoint.interval_nimg, small.train.status_nimg) == (64, 64)  # recipe's fraction, >= 1 batch
    assert small.run_dir.endswith("points/w8-seed0-b256") and small.init.endswith("teachers/w8.safetensors")
    assert [(p.size, p.budget_nimg, p.run) for p in plan.points["along"]] == [
        ("w8", 256, 1),
        ("w8", 1024, 1),
        ("w16", 256, 3),
        ("w16", 1024, 3),
    ]
    assert plan.metrics == {
        "fd_classifier_1step": "FD_classifier/1step/power-0.050",
        "fd_classifier_2step": "FD_classifier/2step/power-0.050",
    }
    # The run's arguments are what the launcher gets: they resolve to the same config through load_config.
    again = load_config(plan.sweep.recipe, list(plan.runs[1].args))
    assert again.eval.at_nimg == [256, 1024] and again.ect.stage_nimg == 256
    along = build_plan(load_sweep(_variant(sweep_file, tmp_path, mode="along", seeds=[0, 3], stages=None)))
    assert [(r.size, r.seed, r.budget_nimg) for r in along.runs] == [
        ("w8", 0, 1024),
        ("w8", 3, 1024),
        ("w16", 0, 1024),
        ("w16", 3, 1024),
    ]
    assert list(along.points) == ["along"] and along.runs[0].cfg.ect.stage_nimg == 256  # stages null: the recipe's
    assert along.runs[1].cfg.eval.seed == 3 * 64  # each seed samples its own evaluation seeds


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"sizes": [{"name": "w8", "preest": "demo-digits8-w8"}]}, ["sizes[0].preest: unknown option", "preset"]),
        ({"sizes": [{"name": "w8", "preset": "demo-digits8-w9"}]}, ["sizes[0].preset", "unknown network preset"]),
        ({"recipe": "no/such.yaml"}, ["recipe: file not found", "Fix:"]),
        ({"budgets_nimg": [256, 1026]}, ["budgets_nimg", "4 equal stages"]),
        ({"budgets_nimg": [256, 288]}, ["budgets_nimg", "train.batch_size=64"]),
        ({"budgets_nimg": [256]}, ["budgets_nimg", "at least 2"]),
        ({"seeds": [0, 0]}, ["seeds", "distinct"]),
        ({"ema": "power-0.100"}, ["ema", "power-0.050"]),
        ({"mode": "alongside"}, ["mode", "'along'"]),
        ({"overrides": {"train": {"total_nimg": 5}}}, ["overrides", "train.total_nimg", "budgets_nimg"]),
        ({"overrides": {"optim.lrr": 0.1}}, ["optim.lrr: unknown option", "lr"]),
        ({"scale_with_budget": ["optim.lr"]}, ["scale_with_budget", "image-count"]),
    ],
)
def test_invalid_sweep_files_name_the_key_and_a_fix(sweep_file, tmp_path, changes, words):
    path = _variant(sweep_file, tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        build_plan(load_sweep(path))
    text = str(err.value)
    assert text.startswith(path) or "Fix:" in text
    assert "Fix:" in text and all(w in text for w in words), text


def test_tool_prints_one_line_and_exits_2(sweep_file, tmp_path, capsys):
    tool = load_script("tools/scaling.py")
    assert tool.main([_variant(sweep_file, tmp_path, seeds=[-1]), "status"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "seeds" in lines[0] and ". Fix: " in lines[0]
    broken = tmp_path / "broken.yaml"
    broken.write_text("recipe: [unclosed\n")
    assert tool.main([str(broken)]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert line.startswith(f"error: {broken}: not valid YAML at line 2, column 1")  # where the parser gave up
    # A size whose teacher file is missing stops `run` before anything trains, naming the fix.
    assert tool.main([sweep_file, "run"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]
    assert "size w8: its teacher file" in line and "teachers" in line
    # So does an evaluation file the trainer would read only after training to the first budget.
    sizes = [{"name": "w8", "preset": "demo-digits8-w8"}]  # No init: a random start, no teacher to check.
    no_ref = _variant(sweep_file, tmp_path, sizes=sizes, overrides={"eval.ref_stats": str(tmp_path / "none.npz")})
    assert tool.main([no_ref, "run"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]
    assert "eval.ref_stats" in line and "does not exist" in line and "Fix: " in line


@pytest.mark.slow  # 116 runs' configs resolved (a few seconds).
def test_shipped_sweep_files_plan(tmp_path):
    paths = sorted(
        os.path.join(REPO, "configs", "sweeps", f) for f in os.listdir(os.path.join(REPO, "configs", "sweeps"))
    )
    assert len(paths) >= 3
    cwd = os.getcwd()
    os.chdir(REPO)  # Sweep files name recipes relative to the repository root.
    try:
        for path in paths:
            plan = build_plan(load_sweep(path))
            assert len(plan.sweep.sizes) >= 3, path
            assert max(plan.sweep.budgets) >= 10 * min(plan.sweep.budgets), path
            assert all(r.cfg.eval.at_nimg for r in plan.runs), path
    finally:
        os.chdir(cwd)


def test_eval_at_nimg_fires_at_the_step_that_reaches_each_count():
    files = ["--data.kind=synthetic", "--eval.ref_stats=r.npz", "--eval.inception_path=i.pt"]
    cfg = load_config(None, ["--eval.at_nimg=[2k, 300, 1Ki]", *files])
    assert cfg.eval.at_nimg == [2000, 300, 1024] and cfg.eval.enabled
    due = EvalSchedule(0, cfg.eval.at_nimg)
    steps = [(n, n + 128) for n in range(0, 2048, 128)]
    assert [after for before, after in steps if due.due(before, after)] == [384, 1024, 2048]
    both = EvalSchedule(1000, [300])
    assert [a for b, a in steps if both.due(b, a)] == [384, 1024, 2048]
    with pytest.raises(ConfigError, match="eval.ref_stats"):
        load_config(None, ["--eval.at_nimg=[256]", "--data.kind=synthetic"])
    with pytest.raises(ConfigError, match="eval.at_nimg"):
        load_config(None, ["--eval.at_nimg=[256, 256]", *files])
