"""The data model of a scaling study: one `Point` per (model size, seed, training budget) run, and its table.

A point is one ECT run: its size (e.g. "w16"), parameter count, seed, training budget in images (`budget_nimg`),
training compute in FLOPs (`compute_flops`), cost (`gpu_hours`, `wall_sec`), measured metrics (e.g.
`{"fd_1step": 87.5, "fd_2step": 14.2}`), run folder, and status: "ok", or "missing" / "failed" with a `reason`.
Missing and failed points stay in the table with their reason; they are never dropped silently and never written
as 0 (their metric cells are empty in the CSV and absent in the JSON).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np

from ect_scale.runtime.errors import UserError

STATUSES = ("ok", "missing", "failed")
COLUMNS = (
    "size",
    "params",
    "seed",
    "budget_nimg",
    "compute_flops",
    "gpu_hours",
    "wall_sec",
    "status",
    "reason",
    "run_dir",
)
_INTS = ("params", "seed", "budget_nimg")
_FLOATS = ("compute_flops", "gpu_hours", "wall_sec")


@dataclass
class Point:
    """One run of a scaling study. `metrics` maps a metric name to its value (lower is better, e.g. FD)."""

    size: str
    params: int
    seed: int
    budget_nimg: int
    compute_flops: float
    gpu_hours: float = math.nan
    wall_sec: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    run_dir: str = ""
    status: str = "ok"
    reason: str = ""

    def __post_init__(self) -> None:
        for name in _INTS:  # Plain Python numbers (not numpy scalars), so tables write and read back exactly.
            setattr(self, name, int(getattr(self, name)))
        for name in _FLOATS:
            setattr(self, name, float(getattr(self, name)))
        self.metrics = {str(k): float(v) for k, v in self.metrics.items()}
        if self.status not in STATUSES:
            raise UserError(f"point {self.label()} has status {self.status!r}", f"use one of {', '.join(STATUSES)}")
        if self.status != "ok" and not self.reason.strip():
            raise UserError(
                f"point {self.label()} is {self.status} without a reason",
                "say why in its `reason` (e.g. 'diverged at 2M images', 'no FID yet')",
            )

    def label(self) -> str:
        """A short name for messages: `w16 seed 0 budget 4000000 img`."""
        return f"{self.size} seed {self.seed} budget {self.budget_nimg} img"

    def value(self, metric: str) -> Optional[float]:
        """The metric's value if this point is ok and has it, else None."""
        if self.status != "ok":
            return None
        return self.metrics.get(metric)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes None)."""
        out = {name: _json_number(getattr(self, name)) for name in COLUMNS}
        out["metrics"] = {k: _json_number(v) for k, v in self.metrics.items()}
        return out

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Point":
        """The inverse of `to_dict` (None becomes NaN for costs)."""
        kwargs = {name: row.get(name) for name in COLUMNS if name in row}
        for name in _FLOATS:
            if name in kwargs:
                kwargs[name] = math.nan if kwargs[name] is None else float(kwargs[name])
        for name in _INTS:
            if name in kwargs:
                kwargs[name] = int(kwargs[name])
        for name in ("reason", "run_dir"):
            kwargs[name] = kwargs.get(name) or ""
        metrics = {k: float(v) for k, v in (row.get("metrics") or {}).items() if v is not None}
        return cls(metrics=metrics, **kwargs)


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def metric_names(points: Iterable[Point]) -> list[str]:
    """Every metric name that occurs, in first-seen order."""
    names: dict[str, None] = {}
    for p in points:
        names.update(dict.fromkeys(p.metrics))
    return list(names)


def by_size(points: Iterable[Point]) -> dict[str, list[Point]]:
    """Points grouped by size, sizes ordered by parameter count (then name). Mixed `params` for a size is an error."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(p.size, []).append(p)
    for size, group in groups.items():
        counts = sorted({p.params for p in group})
        if len(counts) > 1:
            raise UserError(
                f"size {size} has points with different parameter counts {counts}",
                "give every point of a size the same `params` (or different size names)",
            )
    return dict(sorted(groups.items(), key=lambda kv: (kv[1][0].params, kv[0])))


# ----------------------------------------------------------------------------------------------------------------
# Tables.


def write_table(points: list[Point], csv_path: str, json_path: str) -> None:
    """Write every point (missing and failed ones too, with their reason) to a CSV and a JSON file.

    CSV columns: `COLUMNS`, then one column per metric; a point without a metric has an empty cell there.
    """
    names = metric_names(points)
    clash = sorted(set(names) & set(COLUMNS))
    if clash:
        raise UserError(f"metric names {clash} clash with the table's columns", "rename those metrics")
    for path in (csv_path, json_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, *names])
        for p in points:
            writer.writerow([_csv_cell(getattr(p, c)) for c in COLUMNS] + [_csv_cell(p.metrics.get(m)) for m in names])
    with open(json_path, "w") as f:
        json.dump({"points": [p.to_dict() for p in points]}, f, indent=1)
        f.write("\n")


def _csv_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def read_table(path: str) -> list[Point]:
    """Read a table written by `write_table`: a `.json` or a `.csv` file."""
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        rows = data["points"] if isinstance(data, dict) else data
        return [Point.from_dict(row) for row in rows]
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            return [_point_from_csv(row, path, i) for i, row in enumerate(csv.DictReader(f), start=2)]
    raise UserError(f"cannot read the points table {path}: unknown file type", "give a .csv or .json file")


def _point_from_csv(row: dict[str, str], path: str, line: int) -> Point:
    missing = [c for c in ("size", "params", "seed", "budget_nimg", "compute_flops") if not row.get(c)]
    if missing:
        raise UserError(f"{path} line {line} has no {', '.join(missing)}", "fill in those columns")
    try:
        metrics = {k: float(v) for k, v in row.items() if k not in COLUMNS and v not in ("", None)}
        return Point(
            size=row["size"],
            params=int(row["params"]),
            seed=int(row["seed"]),
            budget_nimg=int(row["budget_nimg"]),
            compute_flops=float(row["compute_flops"]),
            gpu_hours=float(row["gpu_hours"]) if row.get("gpu_hours") else math.nan,
            wall_sec=float(row["wall_sec"]) if row.get("wall_sec") else math.nan,
            metrics=metrics,
            run_dir=row.get("run_dir") or "",
            status=row.get("status") or "ok",
            reason=row.get("reason") or "",
        )
    except ValueError as exc:
        raise UserError(f"{path} line {line} has a value that is not a number ({exc})", "correct that cell") from None


# ----------------------------------------------------------------------------------------------------------------
# What a fit may use.


def size_of(points: Iterable[Point]) -> str:
    """The one size the points belong to (UserError if they mix sizes or there are none)."""
    sizes = sorted({p.size for p in points})
    if len(sizes) != 1:
        raise UserError(f"a per-size fit got points of {len(sizes)} sizes {sizes}", "pass the points of one size")
    return sizes[0]


def split_usable(points: Iterable[Point], metric: str) -> tuple[list[Point], list[tuple[Point, str]]]:
    """(points a fit of `metric` uses, [(excluded point, why)]).

    A point is used when it is "ok" and has the metric. Missing and failed points are excluded with their own reason;
    an ok point without the metric is excluded as such. A used point with a non-positive or non-finite metric value
    or compute is bad input (`UserError`): power laws are fitted in log space.
    """
    used, excluded = [], []
    for p in points:
        if p.status != "ok":
            excluded.append((p, f"{p.status}: {p.reason}"))
            continue
        value = p.metrics.get(metric)
        if value is None:
            excluded.append((p, f"no {metric} value"))
            continue
        if not (math.isfinite(value) and value > 0):
            raise UserError(
                f"point {p.label()} has {metric} = {value}; a power-law fit needs positive values",
                "correct the value, or mark the point status 'failed' with a reason",
            )
        if not (math.isfinite(p.compute_flops) and p.compute_flops > 0):
            raise UserError(
                f"point {p.label()} has compute_flops = {p.compute_flops}; it must be positive",
                "recompute its training FLOPs, or mark the point 'failed' with a reason",
            )
        used.append(p)
    return used, excluded


def arrays(points: Iterable[Point], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(compute_flops, values) as float numpy arrays of the points a fit of `metric` uses (see `split_usable`)."""
    used, _ = split_usable(points, metric)
    return (
        np.array([p.compute_flops for p in used], dtype=float),
        np.array([p.metrics[metric] for p in used], dtype=float),
    )
