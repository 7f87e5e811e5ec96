"""A sweep's plan: the runs to train (each an ordinary run folder with its resolved config) and the points each
mode reads from them.

    plan = build_plan(load_sweep("configs/sweeps/digits-cpu.yaml"))
    for run in plan.runs: ...                       # run.args: the launcher's `--key=value` overrides
    plan.points["separate"], plan.points["along"]   # PointRef(mode, size, seed, budget_nimg, run index)

Every run is `launchers/train.py --config <recipe> <run.args>`: the recipe, then the sweep's `overrides`, the size's
`overrides`, then what the point sets (run_dir, init, network.preset, train.seed, train.total_nimg, ect.stage_nimg,
the scaled intervals, eval.at_nimg and eval.seed). Planning resolves and validates every run's config, so a bad
sweep fails before anything trains, with the option and the point named.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from ect_scale.config import Config, NetworkConfig, config_from_dict, load_yaml, parse_override_args, to_dict
from ect_scale.config.base import ConfigError
from ect_scale.config.sources import note_overrides
from ect_scale.eval.inloop import METRIC_TAGS
from ect_scale.eval.sampling import consistency_spec
from ect_scale.networks.flops import model_stats
from ect_scale.scaling.sweep import SizeSpec, SweepConfig, load_sweep


@dataclass
class Run:
    """One training run of the sweep."""

    index: int
    size: str
    seed: int
    budget_nimg: int  # train.total_nimg
    eval_nimg: tuple[int, ...]  # eval.at_nimg: where its points are measured
    run_dir: str
    args: tuple[str, ...]  # `--key=value` overrides after `--config <recipe>`
    cfg: Config

    @property
    def params(self) -> int:
        """The network's parameter count (computed once per network config, when first asked)."""
        return int(network_stats(self.cfg.network)["params"])

    def label(self) -> str:
        return f"{self.size} seed {self.seed} budget {self.budget_nimg:,} img"


@dataclass(frozen=True)
class PointRef:
    """Where one point of a mode is measured: the record at `budget_nimg` images of run `run`."""

    mode: str
    size: str
    seed: int
    budget_nimg: int
    run: int


@dataclass
class Plan:
    sweep: SweepConfig
    runs: list[Run]
    points: dict[str, list[PointRef]]  # "separate" and/or "along"
    metrics: dict[str, str]  # point metric name (e.g. fd_classifier_1step) -> key of the evaluation record
    ema: str

    def runs_of(self, size: str) -> list[Run]:
        return [r for r in self.runs if r.size == size]


def build_plan(sweep: SweepConfig) -> Plan:
    """Every run and point of the sweep, with resolved and validated configs (ConfigError names the point)."""
    base = _load(sweep.recipe, _args(sweep.overrides), "recipe")
    ema = sweep.ema or ema_profiles(base)[0]
    if ema not in ema_profiles(base):
        raise ConfigError(
            f"ema: {ema!r} is not an EMA of the recipe (it has {ema_profiles(base)}). "
            "Fix: name one of them, or set ema.stds in the recipe"
        )
    runs: list[Run] = []
    points: dict[str, list[PointRef]] = {}
    budgets = sweep.budgets
    for size in sweep.sizes:
        shared = {**sweep.overrides, **size.overrides, "network.preset": size.preset}
        cfg0 = _load(sweep.recipe, _args(shared), f"sizes[{size.name}]")  # The size's config before the points.
        for seed in sweep.seeds:
            if sweep.mode in ("separate", "both"):
                for b in budgets:
                    along = sweep.mode == "both" and b == budgets[-1]
                    run = _run(sweep, size, cfg0, seed, b, tuple(budgets) if along else (b,), len(runs))
                    runs.append(run)
                    points.setdefault("separate", []).append(PointRef("separate", size.name, seed, b, run.index))
                    if along:
                        points.setdefault("along", []).extend(
                            PointRef("along", size.name, seed, e, run.index) for e in budgets
                        )
            else:
                run = _run(sweep, size, cfg0, seed, budgets[-1], tuple(budgets), len(runs))
                runs.append(run)
                points.setdefault("along", []).extend(PointRef("along", size.name, seed, e, run.index) for e in budgets)
    return Plan(sweep=sweep, runs=runs, points=points, metrics=metric_keys(base, ema), ema=ema)


def load_plan(sweep_path: str) -> Plan:
    """`build_plan(load_sweep(sweep_path))`; every error names the sweep file."""
    sweep = load_sweep(sweep_path)
    try:
        return build_plan(sweep)
    except ConfigError as exc:
        raise ConfigError(f"{sweep_path}: {exc}") from None


def ema_profiles(cfg: Config) -> list[str]:
    """The EMA profile names a run of `cfg` writes (the names `engine.ema.EMATracker` gives them)."""
    return [f"power-{s:.3f}" for s in cfg.ema.stds] + ([f"beta-{cfg.ema.beta:g}"] if cfg.ema.beta is not None else [])


def metric_keys(cfg: Config, ema: str) -> dict[str, str]:
    """Point metric name -> the evaluation record's key, for each metric and step count of `cfg.eval`."""
    return {f"{m}_{n}step": f"{METRIC_TAGS[m]}/{n}step/{ema}" for m in cfg.eval.metrics for n in sorted(cfg.eval.steps)}


def _run(
    sweep: SweepConfig, size: SizeSpec, cfg0: Config, seed: int, budget: int, evals: tuple[int, ...], index: int
) -> Run:
    """Resolve the config of one run: recipe < sweep overrides < size overrides (`cfg0`) < what the point sets."""
    label = f"{size.name} seed {seed} budget {budget}"
    shared = {**sweep.overrides, **size.overrides, "network.preset": size.preset}
    batch = cfg0.train.batch_size
    bad = [b for b in sorted({budget, *evals}) if b % batch]
    if bad:
        raise ConfigError(
            f"budgets_nimg: {bad} {'is' if len(bad) == 1 else 'are'} not a multiple of train.batch_size={batch} "
            f"(size {size.name}). Fix: use budgets that are whole numbers of steps"
        )
    point: dict[str, Any] = {
        "run_dir": os.path.join(sweep.out_dir, f"{size.name}-seed{seed}-b{budget}"),
        "train.seed": seed,
        "train.total_nimg": budget,
        "eval.at_nimg": list(evals),
    }
    if size.init:
        point["init"] = size.init
    if sweep.stages is not None:
        point["ect.stage_nimg"] = budget // sweep.stages
    for key in sweep.scale_with_budget:
        value = _get(cfg0, key, label)
        if value:
            point[key] = max(batch, round(value * budget / cfg0.train.total_nimg / batch) * batch)
    if sweep.vary_eval_seed:
        point["eval.seed"] = cfg0.eval.seed + seed * cfg0.eval.num_samples
    args = _args({**shared, **point})
    cfg = _load(sweep.recipe, args, label)
    if not cfg.checkpoint.enabled:
        raise ConfigError(
            f"{label}: checkpoint.enabled is false, so an interrupted point could not resume. "
            "Fix: enable checkpoints in the recipe (a sweep resumes its points from them)"
        )
    for n in cfg.eval.steps:
        try:
            consistency_spec(n, cfg.ect.t_mid, cfg.ect.t_max)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None
    return Run(
        index=index,
        size=size.name,
        seed=seed,
        budget_nimg=budget,
        eval_nimg=evals,
        run_dir=cfg.run_dir,
        args=tuple(args),
        cfg=cfg,
    )


_STATS: dict[str, dict] = {}


def network_stats(network: NetworkConfig) -> dict:
    """`networks.flops.model_stats` of a network config, computed once per distinct config (it runs the network on
    the meta device, a fraction of a second each)."""
    key = json.dumps(to_dict(network), sort_keys=True)
    if key not in _STATS:
        _STATS[key] = model_stats(network)
    return _STATS[key]


_RECIPES: dict[tuple[str, int], dict] = {}


def _load(recipe: str, args: list[str], label: str) -> Config:
    """What `launchers/train.py --config recipe *args` resolves (`config.load_config`), the YAML read once."""
    try:
        key = (os.path.abspath(recipe), os.stat(recipe).st_mtime_ns)
        if key not in _RECIPES:
            _RECIPES[key] = load_yaml(recipe)
        overrides, _ = parse_override_args(args, allowed_plain=("run_dir", "init", "description"))
        return config_from_dict(note_overrides(_RECIPES[key], overrides), overrides)
    except ConfigError as exc:
        raise ConfigError(f"{label} ({recipe}): {exc}") from None


def _get(cfg: Config, key: str, label: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not hasattr(node, part):
            raise ConfigError(
                f"scale_with_budget: {key!r} is not an option of the recipe ({label}). "
                "Fix: list image-count options such as checkpoint.interval_nimg"
            )
        node = getattr(node, part)
    if not isinstance(node, int) or isinstance(node, bool):
        raise ConfigError(f"scale_with_budget: {key!r} is not an image count. Fix: list *_nimg options only")
    return node


def _args(overrides: dict[str, Any]) -> list[str]:
    """`--key=value` arguments; values written as YAML the config loader parses back to the same value."""
    return [f"--{key}={yaml_value(value)}" for key, value in overrides.items()]


def yaml_value(value: Any) -> str:
    """A one-line YAML text of `value`: plain where that reads back the same, else JSON (which YAML reads)."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


def describe(run: Run, recipe: str) -> str:
    """The run's command line after the launcher, for messages and logs."""
    return " ".join(["launchers/train.py", "--config", recipe, *run.args])


def find_run(plan: Plan, index: int) -> Optional[Run]:
    return plan.runs[index] if 0 <= index < len(plan.runs) else None
