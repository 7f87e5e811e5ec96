"""Where each recipe value comes from: the `sources:` mapping of a YAML recipe, and the checks on it.

A recipe names a source for every option it sets, in one top-level mapping keyed by the dotted option name:

    sources:
      ect.P_mean: "sCM (arXiv 2410.11081) Table 4, ImageNet 512: consistency proposal P_mean -0.8"
      optim.lr: "ECT locuslab/ect imgnet ct_train.py preset edm2-img64-m: lr=0.0009"

`sources` is inherited through `base:` like any section (a file's entries replace its base's, key by key), kept
in the resolved config (so `<run_dir>/config.yaml` records the provenance of the run), and ignored by training.
Command-line overrides replace the source of the option they change with "command-line override ...".

Checks (used by `Config.validate` and by tests/config/test_recipe_sources.py):
- `check_source_keys`: every key names an existing option and every source is non-empty text.
- `unsourced_options`: options whose resolved value differs from the dataclass defaults (after expanding
  `network.preset`, i.e. what the preset alone would give) but have no source.
- `file_unsourced_options`: options a YAML file sets itself but does not source itself, so a file that changes a
  value inherited from its base must also restate where the new value comes from.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

import yaml

from ect_scale.config.base import ConfigError, from_dict, to_dict

__all__ = [
    "option_names",
    "check_source_keys",
    "flatten",
    "baseline_values",
    "unsourced_options",
    "file_unsourced_options",
    "sourced_rows",
    "note_overrides",
    "EXEMPT",
]

# Bookkeeping options that do not change what is trained; they need no source.
EXEMPT = ("description", "run_dir")


def option_names(cls: type, prefix: str = "") -> list[str]:
    """Every dotted option name of the config tree `cls` (leaves only), e.g. 'ect.q', 'init'."""
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        if not prefix and f.name == "sources":
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            names += option_names(tp, f"{prefix}{f.name}.")
        else:
            names.append(f"{prefix}{f.name}")
    return names


def check_source_keys(sources: dict, cls: type, option: str = "sources") -> None:
    """Every key must be an existing option of `cls` and every value non-empty text (ConfigError otherwise)."""
    known = set(option_names(cls))
    for key, text in sources.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{option}: '{key}' names no option{hint}. "
                f"Fix: key each source by a dotted option name such as 'ect.q' or 'optim.lr'"
            )
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(
                f"{option}.{key}: a source must be non-empty text (got {text!r}). "
                f'Fix: name the paper, table or file and the number, e.g. "ECT run_imgnet_ecm.sh -q 4"'
            )


def flatten(node: Any, prefix: str = "", out: dict | None = None) -> dict:
    """Nested sections -> {'a.b': leaf}; lists are leaves."""
    out = {} if out is None else out
    if isinstance(node, dict):
        for k, v in node.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = node
    return out


def baseline_values(cls: type, preset: str | None) -> dict:
    """Flattened defaults of every option of the config class `cls`, with the network fields `preset` expands to."""
    from ect_scale.config.network import NetworkConfig

    d = to_dict(cls())
    d.pop("sources", None)
    if preset is not None:
        d["network"] = to_dict(from_dict(NetworkConfig, {"preset": preset}, "network"))
    return flatten(d)


def _values(cfg) -> tuple[dict, dict]:
    """(resolved values, baseline values) of `cfg`, both flattened, without bookkeeping options or `sources`."""
    d = to_dict(cfg)
    d.pop("sources", None)
    base = baseline_values(type(cfg), cfg.network.preset)
    return {k: v for k, v in flatten(d).items() if k not in EXEMPT}, base


def unsourced_options(cfg) -> list[str]:
    """Options whose resolved value differs from the defaults (with `cfg.network.preset`) and that have no source."""
    values, base = _values(cfg)
    return sorted(k for k, v in values.items() if v != base.get(k) and k not in cfg.sources)


def file_unsourced_options(path: str) -> list[str]:
    """Options that the YAML file at `path` sets itself (not through `base:`) without sourcing them itself."""
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    own_sources = raw.pop("sources", None) or {}
    raw.pop("base", None)
    return sorted(k for k in flatten(raw) if k not in EXEMPT and k not in own_sources)


def sourced_rows(cfg) -> list[tuple[str, Any, Any, str]]:
    """(option, default incl. preset, value, source) for every option that has a source or differs from default."""
    values, base = _values(cfg)
    return [
        (k, base.get(k), v, cfg.sources.get(k, "MISSING"))
        for k, v in values.items()
        if v != base.get(k) or k in cfg.sources
    ]


def note_overrides(raw: dict, overrides: dict[str, str]) -> dict:
    """Copy of `raw` whose `sources` say which options a command-line override changed."""
    if not overrides:
        return raw
    sources = dict(raw.get("sources") or {})
    for key in overrides:
        if key in EXEMPT or key.split(".", 1)[0] == "sources":
            continue
        old = sources.get(key)
        sources[key] = f"command-line override --{key}" + (f" (recipe source: {old})" if old else "")
    return {**raw, "sources": sources}
