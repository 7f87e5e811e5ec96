"""Typed-dataclass configuration machinery: build from dicts/YAML, dotted overrides, validation errors.

Precedence (lowest to highest): dataclass defaults < YAML file < command-line overrides (`--a.b=value`).

Every component owns a dataclass in `ect_scale/config/<component>.py`. A dataclass may define
`_preprocess(cls, raw: dict) -> dict` (e.g. to expand a named preset before the user's keys are
applied) and `validate(self, path)` (cross-field checks, raising `ConfigError` through `check`).
Fields whose name ends in `_nimg` accept image counts with suffixes: `12.8M`, `128Mi`, `500k`, `2Gi`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from ect_scale.runtime.errors import ConfigError

__all__ = [
    "ConfigError",
    "check",
    "from_dict",
    "to_dict",
    "parse_nimg",
    "apply_overrides",
    "parse_override_args",
    "merge_dicts",
]


def check(cond: bool, option: str, constraint: str, fix: str) -> None:
    """Raise a `ConfigError` naming `option`, the violated `constraint` and how to `fix` it."""
    if not cond:
        raise ConfigError(f"{option}: {constraint}. Fix: {fix}")


def merge_dicts(a: dict, b: dict) -> dict:
    """`a` updated by `b`, recursively for nested mappings (b wins); neither input is modified."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------
# Image counts with unit suffixes.

_NIMG_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def parse_nimg(value: Any, option: str = "nimg") -> int:
    """Parse an image count: an int, or a number with a suffix k/M/G (powers of 10) or Ki/Mi/Gi (powers of 2)."""
    if isinstance(value, bool):
        raise ConfigError(f"{option}: expected an image count, got {value!r}. Fix: write e.g. 12800000, 12.8M or 128Mi")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != int(value):
            raise ConfigError(f"{option}: image count must be a whole number, got {value}. Fix: round it")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(k|M|G|Ki|Mi|Gi)?\s*", str(value))
    if not m:
        raise ConfigError(f"{option}: cannot parse image count {value!r}. Fix: write e.g. 12800000, 12.8M or 128Mi")
    n = float(m.group(1)) * _NIMG_UNITS[m.group(2) or ""]
    return int(round(n))


# ----------------------------------------------------------------------------
# Dict -> dataclass with type coercion.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Coerce `value` to the annotated type `tp`, raising ConfigError with the option path on failure."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, path)
    if origin is Literal:
        return _coerce_choice(value, get_args(tp), path)
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}. Fix: write it as {{key: value}}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path}: expected a section (mapping), got {value!r}. Fix: set its fields as {path}.FIELD=VALUE"
            )
        return from_dict(tp, value, path)
    scalar = _SCALARS.get(tp)
    return scalar(value, path) if scalar is not None else value


def _coerce_union(value: Any, tp: Any, path: str) -> Any:
    """`Optional[X]` / `X | Y`: None (or "none"/"null") where allowed, else the first member that accepts it."""
    args = get_args(tp)
    if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, path)
        except ConfigError as e:
            errors.append(str(e))
    if len(errors) == 1:
        raise ConfigError(errors[0])
    raise ConfigError(f"{path}: {value!r} matches none of {_type_name(tp)}. Fix: check the value's type")


def _coerce_choice(value: Any, choices: tuple, path: str) -> Any:
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{path}: must be one of {list(choices)}, got {value!r}{hint}. Fix: pick one of the listed values"
        )
    return value


def _coerce_sequence(value: Any, tp: Any, path: str) -> Any:
    """A list or tuple, from YAML or from a command-line string ("[1, 2]" or "1,2")."""
    origin, args = get_origin(tp), get_args(tp)
    if isinstance(value, str):
        value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected a list, got {value!r}. Fix: write it as [a, b, ...]")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}. Fix: give exactly {len(args)}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
    elem = args[0] if args else Any
    out = [_coerce(v, elem, f"{path}[{i}]") for i, v in enumerate(value)]
    return tuple(out) if origin is tuple else out


def _to_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.lower() in ("true", "yes", "1", "on")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{path}: expected true/false, got {value!r}. Fix: write true or false")


def _to_int(value: Any, path: str) -> int:
    if path.split(".")[-1].endswith("_nimg"):
        return parse_nimg(value, path)  # Image counts also take "100k", "2.5M".
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value == int(value):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ConfigError(f"{path}: expected an integer, got {value!r}. Fix: write a whole number")


def _to_float(value: Any, path: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: expected a number, got {value!r}. Fix: write a number such as 0.001") from None


def _to_str(value: Any, path: str) -> str:
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{path}: expected a string, got {value!r}. Fix: quote the value")
    return str(value)


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict:
    """The resolved annotations of a config dataclass (resolving them is most of the cost of loading a config)."""
    return typing.get_type_hints(cls)


def from_dict(cls: type, raw: dict, path: str = "") -> Any:
    """Build dataclass `cls` from a (possibly partial) dict, coercing types and rejecting unknown keys."""
    raw = dict(raw or {})
    pre = getattr(cls, "_preprocess", None)
    if pre is not None:
        raw = pre(raw, path)
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else key
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Known options: {', '.join(sorted(fields))}."
            raise ConfigError(f"{sub}: unknown option.{hint} Fix: remove or rename it")
        kwargs[key] = _coerce(value, hints[key], sub)
    obj = cls(**kwargs)
    for name, _f in fields.items():  # Sections left at their defaults are validated too.
        value = getattr(obj, name)
        if name not in kwargs and dataclasses.is_dataclass(value):
            _validate_tree(value, f"{path}.{name}" if path else name)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def _validate_tree(obj: Any, path: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, f"{path}.{f.name}")
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain dict/list tree (YAML/JSON serialisable)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------
# Dotted command-line overrides.


def parse_override_args(argv: list[str], allowed_plain: tuple[str, ...] = ()) -> tuple[dict[str, str], list[str]]:
    """Split `--a.b=value` / `--a.b value` pairs out of argv. Returns (overrides, leftover args).

    Only dotted keys or keys given in `allowed_plain` are treated as overrides; the rest is returned.
    """
    overrides: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0]
        if arg.startswith("--") and ("." in name or name in allowed_plain):
            key, sep, value = arg[2:].partition("=")
            if not sep:
                if i + 1 >= len(argv):
                    raise ConfigError(f"--{key}: missing value. Fix: write --{key}=VALUE")
                value = argv[i + 1]
                i += 1
            overrides[key] = value
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: dict[str, str]) -> dict:
    """Return a copy of the nested dict `raw` with dotted `overrides` applied (values parsed as YAML scalars)."""
    out = _deepcopy_dict(raw)
    for key, text in overrides.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"--{key}: '{p}' is not a section. Fix: check the option path")
            node = node[p]
        node[parts[-1]] = _parse_scalar(text) if isinstance(text, str) else text
    return out


def _deepcopy_dict(d: dict) -> dict:
    return {
        k: _deepcopy_dict(v) if isinstance(v, dict) else (list(v) if isinstance(v, list) else v) for k, v in d.items()
    }
