"""Reference statistics files: EDM2's published pickles, EDM's `.npz`, and ours.

* EDM2 (`img512.pkl`, `img64.pkl`; https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/): a plain pickle of
  `{"fid": {"mu", "sigma"}, "fd_dinov2": {"mu", "sigma"}}` (plus, in files we write, `num_images`). Loaded
  with a restricted unpickler that only rebuilds numpy arrays, so a hostile file cannot run code.
* EDM (`.npz` with `mu`, `sigma`): FID statistics only.
* Ours (`.npz`, no pickles): `fid.mu`, `fid.sigma`, `fd_dinov2.mu`, ..., `num_images`, and `meta` (JSON).
Writing `.pkl` gives EDM2's format (readable by EDM2's own tools); writing `.npz` gives ours.
Paths may be local or fsspec URLs (s3://...). `ReferenceStats.sha256` identifies the file in results.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from typing import Optional

import fsspec
import numpy as np

from ect_scale.eval.stats import GaussianStats
from ect_scale.runtime.errors import UserError

EDM2_REFS_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/"

# Globals a pickle of numpy arrays needs (numpy 1.x and 2.x module names).
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.dtypes", "Float64DType"),
    ("numpy.dtypes", "Float32DType"),
    ("numpy.dtypes", "Int64DType"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1').
}


class ReferenceStatsError(UserError, ValueError):
    """A reference statistics file is missing, unsafe or malformed."""


@dataclass
class ReferenceStats:
    """metric name -> GaussianStats, plus where they came from."""

    stats: dict[str, GaussianStats]
    path: str = ""
    sha256: str = ""
    meta: dict = field(default_factory=dict)

    def require(self, metric: str, feature_dim: Optional[int] = None) -> GaussianStats:
        """The statistics for `metric`, or an error naming what the file holds and how to fix it."""
        if metric not in self.stats:
            raise ReferenceStatsError(
                f"{self.path}: has no '{metric}' statistics (it has: {', '.join(sorted(self.stats)) or 'none'}). "
                f"Fix: compute them with tools/fid_ref.py --metrics {metric}, or do not request {metric}"
            )
        ref = self.stats[metric]
        if feature_dim is not None and ref.feature_dim != feature_dim:
            raise ReferenceStatsError(
                f"{self.path}: '{metric}' statistics are {ref.feature_dim}-d but the detector gives {feature_dim}-d "
                "features. Fix: use reference statistics computed with the same detector"
            )
        return ref


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise ReferenceStatsError(
                f"{self.path}: refusing to unpickle '{module}.{name}'. Reference statistics must be plain dicts of "
                "numpy arrays (EDM2's img512.pkl/img64.pkl format). Fix: recompute the file with tools/fid_ref.py"
            )
        try:
            return getattr(importlib.import_module(module), name)
        except ModuleNotFoundError:  # numpy 2 pickles name numpy._core; numpy 1 has numpy.core.
            alt = (
                module.replace("numpy._core", "numpy.core")
                if "_core" in module
                else module.replace("numpy.core", "numpy._core")
            )
            return getattr(importlib.import_module(alt), name)


def _gaussian(entry, path: str, metric: str, num: int) -> GaussianStats:
    if not isinstance(entry, dict) or "mu" not in entry or "sigma" not in entry:
        raise ReferenceStatsError(
            f"{path}: '{metric}' must hold 'mu' and 'sigma'. Fix: recompute the file with tools/fid_ref.py"
        )
    mu, sigma = np.asarray(entry["mu"], np.float64), np.asarray(entry["sigma"], np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ReferenceStatsError(
            f"{path}: '{metric}' has mu {mu.shape} and sigma {sigma.shape}; expected [D] and [D,D]"
        )
    return GaussianStats(mu=mu, sigma=sigma, num=int(entry.get("num_images", num)))


def _from_pickle(blob: bytes, path: str) -> tuple[dict[str, GaussianStats], dict]:
    try:
        raw = _NumpyOnlyUnpickler(io.BytesIO(blob), path).load()
    except ReferenceStatsError:
        raise
    except Exception as e:  # Truncated or not a pickle.
        raise ReferenceStatsError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise ReferenceStatsError(f"{path}: expected a dict of metrics, got {type(raw).__name__}")
    num = int(raw.get("num_images", 0) or 0)
    stats = {k: _gaussian(v, path, k, num) for k, v in raw.items() if isinstance(v, dict)}
    return stats, {"num_images": num} if num else {}


def _from_npz(blob: bytes, path: str) -> tuple[dict[str, GaussianStats], dict]:
    try:
        data = dict(np.load(io.BytesIO(blob), allow_pickle=False))
    except Exception as e:
        raise ReferenceStatsError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
    meta = json.loads(str(data.pop("meta"))) if "meta" in data else {}
    num = int(data.pop("num_images", 0))
    if set(data) >= {"mu", "sigma"}:  # EDM's FID-only format.
        return {"fid": _gaussian(data, path, "fid", num)}, meta
    stats = {}
    for key in sorted(data):
        metric, _, part = key.rpartition(".")
        if part in ("mu", "sigma") and metric not in stats:
            stats[metric] = _gaussian(
                {"mu": data.get(f"{metric}.mu"), "sigma": data.get(f"{metric}.sigma")}, path, metric, num
            )
    if not stats:
        raise ReferenceStatsError(f"{path}: no statistics found (keys {sorted(data)[:6]})")
    return stats, meta


def load_reference(path: str) -> ReferenceStats:
    """Read reference statistics (format chosen by content: zip -> .npz, else pickle)."""
    try:
        with fsspec.open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise ReferenceStatsError(
            f"reference statistics not found: {path}. Fix: download EDM2's img512.pkl or img64.pkl from "
            f"{EDM2_REFS_URL}, or compute them from the dataset with tools/fid_ref.py"
        ) from None
    stats, meta = _from_npz(blob, path) if blob[:4] == b"PK\x03\x04" else _from_pickle(blob, path)
    return ReferenceStats(stats=stats, path=path, sha256=hashlib.sha256(blob).hexdigest(), meta=meta)


def save_reference(path: str, stats: dict[str, GaussianStats], meta: Optional[dict] = None) -> str:
    """Write statistics: `.pkl` -> EDM2's format, `.npz` -> ours (with `meta`). Returns the file's sha256."""
    num = max((s.num for s in stats.values()), default=0)
    if path.endswith(".pkl"):
        obj = {"num_images": num, **{k: {"mu": s.mu, "sigma": s.sigma} for k, s in stats.items()}}
        blob = pickle.dumps(obj, protocol=4)
    elif path.endswith(".npz"):
        arrays = {"num_images": np.asarray(num), "meta": np.asarray(json.dumps(meta or {}))}
        for k, s in stats.items():
            arrays[f"{k}.mu"], arrays[f"{k}.sigma"] = s.mu, s.sigma
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        blob = buf.getvalue()
    else:
        raise ReferenceStatsError(f"{path}: unknown extension. Fix: end the name in .pkl (EDM2 format) or .npz (ours)")
    fs, fspath = fsspec.core.url_to_fs(path)
    parent = os.path.dirname(fspath)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(fspath + ".partial", "wb") as f:
        f.write(blob)
    fs.mv(fspath + ".partial", fspath)
    return hashlib.sha256(blob).hexdigest()
