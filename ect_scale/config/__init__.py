"""The full run configuration: one typed dataclass per component, composed into `Config`.

    cfg = load_config("configs/ect-img512-s.yaml", ["--ect.q=4", "--train.batch_gpu=16"])

YAML files may name a `base:` file (path relative to the YAML) whose values they extend. Precedence:
dataclass defaults < base YAML < YAML < command-line overrides. `dump_config` writes the resolved config.
A top-level `sources:` mapping names where each recipe value comes from (`ect_scale/config/sources.py`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

import yaml

from ect_scale.config.base import (
    ConfigError,
    apply_overrides,
    check,
    from_dict,
    merge_dicts,
    parse_nimg,
    parse_override_args,
    to_dict,
)
from ect_scale.config.checkpoint import CheckpointConfig
from ect_scale.config.data import DataConfig
from ect_scale.config.distill import DistillConfig
from ect_scale.config.ect import ECTConfig
from ect_scale.config.ema import EMAConfig
from ect_scale.config.engine import EngineConfig
from ect_scale.config.eval import EvalConfig
from ect_scale.config.logging import LoggingConfig
from ect_scale.config.network import NetworkConfig
from ect_scale.config.optim import OptimConfig
from ect_scale.config.sources import check_source_keys, note_overrides
from ect_scale.config.train import TrainLoopConfig

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "load_yaml",
    "dump_config",
    "config_from_dict",
    "parse_override_args",
    "NetworkConfig",
    "ECTConfig",
    "TrainLoopConfig",
    "OptimConfig",
    "EngineConfig",
    "DataConfig",
    "DistillConfig",
    "EMAConfig",
    "CheckpointConfig",
    "EvalConfig",
    "LoggingConfig",
    "check",
    "from_dict",
    "to_dict",
    "parse_nimg",
]


DISTILL_OBJECTIVES = ("cd", "ecd")  # The objectives that read `teacher:`, `guide:` and `distill.*`.


@dataclass
class Config:
    run_dir: str = "runs/ect"  # Output directory (TensorBoard, stats.jsonl, resolved config, checkpoints).
    init: Optional[str] = None  # Pretrained network file (safetensors + config) to start from; null = random init.
    teacher: Optional[str] = None  # cd / ecd: the frozen teacher's network file (may differ from `init`).
    guide: Optional[str] = None  # cd / ecd with distill.guidance != 1: the guide network's file.
    description: str = ""  # Free text shown in the config table and saved with the run.
    network: NetworkConfig = field(default_factory=NetworkConfig)
    ect: ECTConfig = field(default_factory=ECTConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Provenance: dotted option name -> where its value comes from (paper, table, number). Inherited through
    # `base:`, stored with the resolved config, ignored by training; see ect_scale/config/sources.py.
    sources: dict[str, str] = field(default_factory=dict)

    def validate(self, path: str = "") -> None:
        check_source_keys(self.sources, type(self))
        check(
            abs(self.network.sigma_data - self.ect.sigma_data) < 1e-12,
            "ect.sigma_data",
            f"must equal network.sigma_data ({self.ect.sigma_data} != {self.network.sigma_data})",
            "set both to the same value (EDM2: 0.5)",
        )
        if self.ect.learned_uncertainty:
            check(
                self.network.logvar_channels > 0,
                "ect.learned_uncertainty",
                "needs the log-variance head",
                "set network.logvar_channels > 0 (EDM2: 128)",
            )
        self._validate_distill()
        check(
            self.network.compute_dtype == "float32",
            "network.compute_dtype",
            f"training computes in engine.precision ({self.engine.precision}); network.compute_dtype only applies "
            "to networks built for sampling",
            "remove network.compute_dtype and set engine.precision=bf16|fp16|tf32|fp32",
        )
        window = max(self.data.outage_window_s, self.checkpoint.outage_window_s)
        check(
            not self.train.hang_timeout_s or self.train.hang_timeout_s > window,
            "train.hang_timeout_s",
            f"must be longer than the store outage windows (data.outage_window_s / checkpoint.outage_window_s, "
            f"up to {window:g} s), which a healthy run may spend waiting (got {self.train.hang_timeout_s:g})",
            "raise train.hang_timeout_s, lower the outage windows, or set train.hang_timeout_s=0 (off)",
        )

    def _validate_distill(self) -> None:
        """The teacher and guide files go with the distillation objectives, and only with them."""
        objective, d = self.ect.objective, self.distill
        distilling = objective in DISTILL_OBJECTIVES
        check(
            not distilling or bool(self.teacher),
            "teacher",
            f"ect.objective={objective} distills a teacher, but no teacher file is set",
            "set teacher: to a network file (tools/import_edm2.py converts EDM2 pickles; docs/distillation.md)",
        )
        check(
            distilling or not (self.teacher or self.guide),
            "teacher" if self.teacher else "guide",
            f"ect.objective={objective} uses no teacher or guide network",
            "remove teacher:/guide:, or set ect.objective=cd or ecd",
        )
        check(
            not (d.guidance != 1.0 and not self.guide),
            "distill.guidance",
            f"guidance {d.guidance:g} needs a guide network, but guide: is not set",
            "set guide: to a network file (e.g. a smaller or shorter-trained EDM2 net), or distill.guidance=1",
        )
        check(
            not (self.guide and d.guidance == 1.0),
            "guide",
            "a guide network has no effect at distill.guidance=1",
            "set distill.guidance (e.g. 2.05 as sony/cmt's ImageNet-512 ECD) or remove guide:",
        )
        if objective == "cd":
            check(
                d.t_min < self.ect.t_max,
                "distill.t_min",
                f"must be below ect.t_max ({d.t_min} >= {self.ect.t_max})",
                "CD uses 0.002 and T = 80",
            )
            check(
                not self.ect.learned_uncertainty,
                "ect.learned_uncertainty",
                "cd does not use the log-variance head",
                "set ect.learned_uncertainty=false",
            )

    # Fields that must not change when resuming a run (the checkpoint stores them and names any difference).
    IMMUTABLE = ("network", "ect", "train.batch_size", "train.seed", "optim", "ema.stds", "ema.beta")
    # ...except these, which change speed but not the model or the objective.
    RESUME_SAFE = ("network.compute_dtype", "network.attention")


def load_yaml(path: str) -> dict:
    """Read a YAML config, resolving `base:` chains (relative to the including file)."""
    seen = []
    return _load_yaml(os.path.abspath(path), seen)


def _load_yaml(path: str, seen: list[str]) -> dict:
    if path in seen:
        raise ConfigError(f"base: circular include {' -> '.join(seen + [path])}. Fix: remove the cycle")
    if not os.path.isfile(path):
        raise ConfigError(f"--config: file not found: {path}. Fix: pass an existing YAML file (see configs/)")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(
                f"{path}: not valid YAML{where} ({problem}). Fix: correct the YAML syntax there"
            ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = _load_yaml(os.path.normpath(os.path.join(os.path.dirname(path), base)), seen + [path])
    return merge_dicts(parent, raw)


def config_from_dict(raw: dict, overrides: Optional[dict[str, str]] = None) -> Config:
    """Build and validate a `Config` from a nested dict plus dotted overrides."""
    return from_dict(Config, apply_overrides(raw, overrides or {}))


def load_config(path: Optional[str], overrides: Optional[list[str] | dict[str, str]] = None) -> Config:
    """Load a YAML recipe (or defaults if `path` is None) and apply `--a.b=value` overrides."""
    raw = load_yaml(path) if path else {}
    if isinstance(overrides, list):
        overrides, rest = parse_override_args(
            overrides, allowed_plain=("run_dir", "init", "teacher", "guide", "description")
        )
        if rest:
            raise ConfigError(f"unrecognised arguments {rest}. Fix: write overrides as --section.option=value")
    return config_from_dict(note_overrides(raw, overrides or {}), overrides or {})


def dump_config(cfg: Config, path: Optional[str] = None) -> str:
    """Resolved config as YAML text; also written to `path` if given."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return text


def immutable_fields(cfg: Config) -> dict:
    """The resume-sensitive part of the config, flattened to 'a.b' -> value, for hashing and diffing."""
    flat = {}
    d = to_dict(cfg)
    for key in Config.IMMUTABLE:
        node = d
        for part in key.split("."):
            node = node[part]
        _flatten(key, node, flat)
    if cfg.ect.objective in DISTILL_OBJECTIVES:  # Only distillation runs read it (older checkpoints lack it).
        _flatten("distill", d["distill"], flat)
    return {k: v for k, v in flat.items() if k not in Config.RESUME_SAFE}


def _flatten(prefix: str, node, out: dict) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = node


def replace(cfg, **changes):
    """dataclasses.replace re-exported for convenience in tests and tools."""
    return dataclasses.replace(cfg, **changes)
