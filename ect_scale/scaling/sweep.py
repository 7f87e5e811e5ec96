"""The sweep file of a scaling study: a base recipe, a grid of model sizes (each with its teacher), budgets in images
and seeds, and how the points are obtained. Typed dataclasses, validated with errors that name the key and a fix.

    sweep = load_sweep("configs/sweeps/digits-cpu.yaml")

Paths in a sweep file (`recipe`, `out_dir`, `sizes[].init`, `sizes[].teacher_config`) are relative to the working
directory, like `--config` and `run_dir` (run the tools from the repository root); `base:` names another sweep file,
relative to this one, whose values this one extends (as recipes do).

Modes (docs/scaling.md compares them):
- `separate`: one run per (size, seed, budget), each with ECT's stage schedule scaled to its budget
  (`ect.stage_nimg = budget / stages`) and the intervals of `scale_with_budget` scaled in proportion;
- `along`: one run per (size, seed) as long as the largest budget (stages scaled to it), evaluated when it reaches
  each budget (`eval.at_nimg`);
- `both`: the separate runs, where the largest one (the same run as `along`'s) is also evaluated at every budget:
  both sets of points for the price of the separate ones.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from ect_scale.config import load_yaml
from ect_scale.config.base import check, from_dict, parse_nimg
from ect_scale.config.presets import PRESETS
from ect_scale.runtime.errors import ConfigError

MODES = ("separate", "along", "both")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Intervals that keep the same fraction of a run when the budget changes (checkpoints, exports, status, evaluation).
DEFAULT_SCALED = ["checkpoint.interval_nimg", "ema.export_nimg", "train.status_nimg", "eval.interval_nimg"]


@dataclass
class SizeSpec:
    """One model size of the grid."""

    name: str = ""  # Its label in tables and run folders, e.g. "w16" or "S".
    preset: str = ""  # network.preset of its points.
    init: Optional[str] = None  # Its teacher: the network file every point of this size starts from.
    teacher_config: Optional[str] = None  # The recipe that pretrains that teacher (`tools/scaling.py ... teachers`).
    overrides: dict[str, Any] = field(default_factory=dict)  # Options for this size only, e.g. {optim.lr: 0.0009}.

    def validate(self, path: str = "sizes[]") -> None:
        check(
            bool(NAME_RE.match(self.name)),
            f"{path}.name",
            f"must be a short name of letters, digits, '-', '_' or '.' (got {self.name!r})",
            "name the size, e.g. w16 or S",
        )
        check(
            self.preset in PRESETS,
            f"{path}.preset",
            f"unknown network preset {self.preset!r}",
            f"use one of {', '.join(sorted(PRESETS))} (ect_scale/config/presets.py)",
        )
        _check_overrides(self.overrides, f"{path}.overrides")


@dataclass
class LauncherSpec:
    """How `tools/scaling.py run` starts each point on this machine."""

    kind: Literal["python", "deepspeed", "torchrun"] = "python"  # python = `python launchers/train.py` (1 process).
    procs: int = 1  # Processes (GPUs, or CPU ranks with DS_ACCELERATOR=cpu) per point.
    master_port: int = 29541  # deepspeed / torchrun rendezvous port (one point runs at a time).
    env: dict[str, str] = field(default_factory=dict)  # Extra environment variables, e.g. {OMP_NUM_THREADS: "1"}.

    def validate(self, path: str = "launcher") -> None:
        check(self.procs >= 1, f"{path}.procs", f"must be >= 1 (got {self.procs})", "use 1, or the GPUs per point")
        check(
            self.kind != "python" or self.procs == 1,
            f"{path}.procs",
            f"kind python starts one process (got procs {self.procs})",
            "use kind deepspeed or torchrun for several processes",
        )
        check(0 < self.master_port < 65536, f"{path}.master_port", "must be a TCP port", "use e.g. 29541")


@dataclass
class SlurmSpec:
    """The SLURM array job `tools/scaling.py ... slurm` writes (one task per run; launchers/slurm_train.sbatch)."""

    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 12
    time: str = "24:00:00"  # Per task (a requeued task resumes from its checkpoint).
    partition: Optional[str] = None
    account: Optional[str] = None
    max_parallel: int = 0  # At most this many tasks at once (`--array=...%N`); 0 = no limit.
    env: dict[str, str] = field(default_factory=dict)  # Exported in each task (e.g. object-store endpoints).

    def validate(self, path: str = "slurm") -> None:
        check(self.nodes >= 1 and self.gpus_per_node >= 1, f"{path}.nodes", "nodes and GPUs must be >= 1", "use 1+")
        check(self.cpus_per_task >= 1, f"{path}.cpus_per_task", "must be >= 1", "use e.g. 12")
        check(self.max_parallel >= 0, f"{path}.max_parallel", "must be >= 0", "use 0 for no limit")
        check(
            bool(re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", self.time)),
            f"{path}.time",
            f"is not a SLURM time limit (got {self.time!r})",
            "write e.g. 24:00:00 or 2-00:00:00",
        )


@dataclass
class ReportSpec:
    """What `tools/scaling.py ... report` fits and predicts."""

    predict_at_flops: Optional[float] = None  # Where to predict; default 4x the largest measured compute.
    n_boot: int = 1000  # Bootstrap resamples for the CIs.
    method: Literal["loo", "last"] = "loo"  # Held-out test choosing the form: leave one budget out, or the largest.

    def validate(self, path: str = "report") -> None:
        check(
            self.predict_at_flops is None or self.predict_at_flops > 0,
            f"{path}.predict_at_flops",
            "must be > 0",
            "give FLOPs, e.g. 1e21, or null for 4x the largest measured compute",
        )
        check(self.n_boot >= 0, f"{path}.n_boot", "must be >= 0", "use e.g. 1000")


@dataclass
class SweepConfig:
    """A scaling sweep (see the module docstring)."""

    description: str = ""
    recipe: str = ""  # The base ECT recipe of every point (a configs/*.yaml file).
    out_dir: str = ""  # Folder of the points' run folders, the SLURM files and the report.
    mode: Literal["separate", "along", "both"] = "separate"
    sizes: list[SizeSpec] = field(default_factory=list)
    budgets_nimg: list[int] = field(default_factory=list)  # Training budgets in images (accepts 2k, 12.8M, ...).
    seeds: list[int] = field(default_factory=lambda: [0])  # train.seed of each point's run.
    stages: Optional[int] = 4  # ECT stages per run: ect.stage_nimg = run budget / stages; null = the recipe's.
    scale_with_budget: list[str] = field(default_factory=lambda: list(DEFAULT_SCALED))  # *_nimg options scaled.
    vary_eval_seed: bool = True  # eval.seed += seed * eval.num_samples: each seed samples its own images too.
    ema: str = ""  # The EMA profile whose metrics become the points (e.g. power-0.050); "" = the recipe's first.
    overrides: dict[str, Any] = field(default_factory=dict)  # Options for every point.
    launcher: LauncherSpec = field(default_factory=LauncherSpec)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    report: ReportSpec = field(default_factory=ReportSpec)

    @classmethod
    def _preprocess(cls, raw: dict, path: str = "") -> dict:
        """Budgets accept image counts with suffixes (`2k`, `12.8M`), as every `*_nimg` option does."""
        budgets = raw.get("budgets_nimg")
        if isinstance(budgets, (list, tuple)):
            raw = dict(raw, budgets_nimg=[parse_nimg(v, f"budgets_nimg[{i}]") for i, v in enumerate(budgets)])
        return raw

    def validate(self, path: str = "") -> None:
        check(bool(self.recipe), "recipe", "is required", "name the base ECT recipe, e.g. configs/demo-digits.yaml")
        check(
            os.path.isfile(self.recipe),
            "recipe",
            f"file not found: {self.recipe} (relative to the working directory {os.getcwd()})",
            "run from the repository root, or give the recipe's path",
        )
        check(bool(self.out_dir), "out_dir", "is required", "name the sweep's folder, e.g. runs/scaling-digits/points")
        check(len(self.sizes) >= 1, "sizes", "must list at least one model size", "add {name, preset, init} entries")
        names = [s.name for s in self.sizes]
        check(len(set(names)) == len(names), "sizes", f"names must be distinct (got {names})", "rename the repeats")
        check(
            len(set(self.budgets_nimg)) >= 2 and all(b > 0 for b in self.budgets_nimg),
            "budgets_nimg",
            f"must list at least 2 distinct budgets > 0 (got {self.budgets_nimg})",
            "list training budgets in images, e.g. [2k, 4k, 8k, 16k, 32k]",
        )
        check(
            len(set(self.budgets_nimg)) == len(self.budgets_nimg),
            "budgets_nimg",
            f"has repeats ({self.budgets_nimg})",
            "list each budget once",
        )
        check(
            len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds) and min(self.seeds) >= 0,
            "seeds",
            f"must list distinct seeds >= 0 (got {self.seeds})",
            "use e.g. [0, 1, 2]; two or more measure the seed-to-seed noise",
        )
        if self.stages is not None:
            check(self.stages >= 1, "stages", f"must be >= 1 (got {self.stages})", "use ECT's 4, or null")
            bad = [b for b in self.budgets_nimg if b % self.stages]
            check(
                not bad,
                "budgets_nimg",
                f"{bad} cannot be split into {self.stages} equal stages",
                f"use budgets divisible by stages={self.stages}",
            )
        for key in self.scale_with_budget:
            check(
                key.endswith("_nimg") and "." in key,
                "scale_with_budget",
                f"{key!r} is not an image-count option (section.name_nimg)",
                f"list options such as {', '.join(DEFAULT_SCALED)}",
            )
        _check_overrides(self.overrides, "overrides")
        for key in ("run_dir", "init", "network.preset", "train.seed", "train.total_nimg"):
            check(
                key not in self.overrides and all(key not in s.overrides for s in self.sizes),
                "overrides",
                f"sets {key}, which the sweep sets per point",
                "remove it (use out_dir, sizes[].init, sizes[].preset, seeds, budgets_nimg)",
            )

    @property
    def budgets(self) -> list[int]:
        """The budgets, smallest first."""
        return sorted(self.budgets_nimg)

    def size(self, name: str) -> SizeSpec:
        return next(s for s in self.sizes if s.name == name)


def _check_overrides(overrides: dict[str, Any], path: str) -> None:
    for key, value in overrides.items():
        check(
            isinstance(key, str) and bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key)),
            path,
            f"{key!r} is not a dotted option name",
            "write options as section.name, e.g. optim.lr",
        )
        check(
            "\t" not in str(value) and "\n" not in str(value),
            f"{path}.{key}",
            "must not contain tabs or line breaks",
            "write the value on one line",
        )


def load_sweep(path: str) -> SweepConfig:
    """Read and validate a sweep file; errors name the file, the key and a fix (`ConfigError`)."""
    if not os.path.isfile(path):
        raise ConfigError(f"sweep file not found: {path}. Fix: pass a sweep YAML, e.g. configs/sweeps/digits-cpu.yaml")
    try:
        raw = load_yaml(path)
    except yaml.YAMLError as exc:
        where = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML ({where})", "correct the YAML syntax there") from None
    except ConfigError as exc:
        text = str(exc) if str(exc).startswith(path) else f"{path}: {exc}"
        fix = None if "Fix:" in text else "write the sweep file as a mapping of keys, as in configs/sweeps/"
        raise ConfigError(text, fix) from None
    try:
        return from_dict(SweepConfig, _flatten_overrides(raw))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _flatten_overrides(raw: dict) -> dict:
    """`overrides` (sweep-wide and per size) may be nested YAML sections; flatten them to dotted keys."""
    out = dict(raw)
    if isinstance(out.get("overrides"), dict):
        out["overrides"] = _flat(out["overrides"])
    if isinstance(out.get("sizes"), list):
        out["sizes"] = [
            dict(s, overrides=_flat(s["overrides"]))
            if isinstance(s, dict) and isinstance(s.get("overrides"), dict)
            else s
            for s in out["sizes"]
        ]
    return out


def _flat(node: dict, prefix: str = "") -> dict:
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out
