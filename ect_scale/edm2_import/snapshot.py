"""An EDM2 snapshot pickle as plain data: the `ema` network's tensors and per-module records, encoder, loss.

Snapshot layout (NVlabs/edm2 `training/training_loop.py`, `reconstruct_phema.py`): a dict
(`dnnlib.EasyDict`) with `ema` (the whole `Precond` module, fp16, eval mode), `encoder`, `dataset_kwargs` and
`loss_fn`. ECT's releases (locuslab/ect `imgnet`) hold only `ema`. Every network class is persisted, so each
module arrives as a `PersistentObject` whose state holds `_parameters`, `_buffers`, `_modules`, plain
attributes and the recorded `_init_args`/`_init_kwargs`; `torch.nn.ModuleDict` arrives as a `ForeignObject`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import fsspec
import torch

from ect_scale.edm2_import.unpickler import Edm2ImportError, ForeignObject, PersistentObject, safe_load

SNAPSHOT_KEYS = ("ema", "encoder", "dataset_kwargs", "loss_fn")
PERSISTENCE_VERSION = 6  # `torch_utils.persistence._version` in NVlabs/edm2 (and EDM, StyleGAN3, ECT).
_EXPECTED = (
    "an EDM2 snapshot pickle: a dict with 'ema' (an EDM2 Precond network) and usually 'encoder', "
    "'dataset_kwargs', 'loss_fn' (network-snapshot-*.pkl, posthoc-reconstructions/*.pkl, ECT releases)"
)
_PLAIN = (bool, int, float, str, type(None), list, tuple)


@dataclass
class ModuleRecord:
    """One module of the persisted network: its class and its plain attributes (no tensors, no submodules)."""

    path: str  # Dotted path in the network; '' is the root `Precond`.
    class_name: str  # Persisted class name ('Block', 'MPConv', ...) or a container's global name.
    attrs: dict[str, Any]  # Plain attributes: img_resolution, dropout, num_heads, resample_filter, ...
    init_args: tuple = ()  # Constructor arguments recorded by the persistence decorator.
    init_kwargs: dict = field(default_factory=dict)


@dataclass
class Edm2Snapshot:
    source: str
    tensors: dict[str, torch.Tensor]  # The `ema` network's state dict (EDM2 names, the pickle's dtype).
    buffers: set[str]  # Which of `tensors` are buffers (Fourier frequencies and phases).
    modules: dict[str, ModuleRecord]  # Module path -> record, in the network's order.
    encoder: Optional[PersistentObject]  # StabilityVAEEncoder / StandardRGBEncoder, or None (ECT releases).
    loss_fn: Optional[PersistentObject]
    dataset_kwargs: Optional[dict]
    keys: list[str]  # Top-level keys of the snapshot dict.
    module_sha256: str  # SHA-256 of the persisted network module source (kept, never executed).

    @property
    def root(self) -> ModuleRecord:
        return self.modules[""]

    def children(self, path: str) -> list[ModuleRecord]:
        """Direct submodules of `path`, in order."""
        prefix = f"{path}." if path else ""
        return [m for p, m in self.modules.items() if p.startswith(prefix) and p and "." not in p[len(prefix) :]]


# ----------------------------------------------------------------------------


def load_pickle(path: str) -> Any:
    """Unpickle a local path or fsspec URL with the restricted unpickler (no code from the file runs)."""
    try:
        with fsspec.open(path, "rb") as f:
            head = f.read(4)
            if head[:4] == b"PK\x03\x04":
                raise Edm2ImportError(
                    f"{path}: found a zip archive (a torch.save file such as training-state-*.pt), "
                    f"expected {_EXPECTED}. Fix: import a network-snapshot-*.pkl instead"
                )
            f.seek(0)
            return safe_load(f, source=os.path.basename(path.rstrip("/")) or path)
    except FileNotFoundError:
        raise Edm2ImportError(
            f"{path}: file not found. Fix: check the path, or download the pickle first "
            "(docs/import.md lists the published URLs)"
        ) from None


def _kind_hint(obj: Any) -> str:
    if isinstance(obj, PersistentObject):
        return f"a persisted '{obj.class_name}' object"
    if isinstance(obj, ForeignObject):
        return f"a '{obj.global_name}' object"
    return f"a {type(obj).__name__}"


def _check_persistent(obj: PersistentObject, where: str) -> None:
    if obj.kind != "class" or obj.version != PERSISTENCE_VERSION:
        raise Edm2ImportError(
            f"{where}: found persistence type {obj.kind!r} version {obj.version!r}, expected type "
            f"'class' version {PERSISTENCE_VERSION} (NVIDIA's torch_utils.persistence as used by "
            "EDM2). Fix: re-save the network with the EDM2 code base"
        )


def _module_record(obj: Any, path: str) -> ModuleRecord:
    where = f"ema.{path}" if path else "ema"
    if isinstance(obj, PersistentObject):
        _check_persistent(obj, where)
        state, name, args, kwargs = obj.state, obj.class_name, obj.init_args, obj.init_kwargs
    elif isinstance(obj, ForeignObject):
        state, name, args, kwargs = getattr(obj, "state", {}), obj.global_name, (), {}
    else:
        raise Edm2ImportError(
            f"{where}: found {_kind_hint(obj)}, expected a persisted EDM2 module or a torch "
            "container. Fix: this network was not written by EDM2's code"
        )
    attrs = {k: v for k, v in state.items() if isinstance(k, str) and not k.startswith("_") and isinstance(v, _PLAIN)}
    return ModuleRecord(path, name, attrs, tuple(args), dict(kwargs))


def _entries(state: dict, key: str, where: str) -> list[tuple[str, Any]]:
    value = state.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise Edm2ImportError(f"{where}.{key}: found {_kind_hint(value)}, expected a dict keyed by names")
    return list(value.items())


def _walk(
    obj: Any, path: str, modules: dict[str, ModuleRecord], tensors: dict[str, torch.Tensor], buffers: set[str]
) -> None:
    """Depth-first, in registration order (the order of `nn.Module.state_dict`)."""
    modules[path] = _module_record(obj, path)
    state = obj.state if isinstance(obj, PersistentObject) else getattr(obj, "state", {})
    skip = state.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset, list, tuple)) else set()
    prefix, where = (f"{path}." if path else ""), (f"ema.{path}" if path else "ema")
    for group in ("_parameters", "_buffers"):
        for name, t in _entries(state, group, where):
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise Edm2ImportError(f"ema.{prefix}{name}: found {_kind_hint(t)}, expected a floating-point tensor")
            tensors[prefix + name] = t
            if group == "_buffers":
                buffers.add(prefix + name)
    for name, child in _entries(state, "_modules", where):
        if child is not None:
            _walk(child, prefix + name, modules, tensors, buffers)


def interpret_snapshot(data: Any, source: str) -> Edm2Snapshot:
    """Check the top-level layout and flatten the `ema` network into tensors and module records."""
    if not isinstance(data, dict):
        raise Edm2ImportError(f"{source}: found {_kind_hint(data)} at the top level, expected {_EXPECTED}")
    keys = [str(k) for k in data]
    if "ema" not in data:
        raise Edm2ImportError(
            f"{source}: found keys {keys}, expected {_EXPECTED}. Fix: pass a network snapshot, "
            "not a training state or statistics file"
        )
    ema = data["ema"]
    if not isinstance(ema, PersistentObject) or ema.class_name != "Precond":
        hint = (
            " This looks like an EDM (2022) network; only EDM2 networks are supported."
            if (
                isinstance(ema, PersistentObject)
                and ema.class_name in ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond", "ECMPrecond")
            )
            else ""
        )
        raise Edm2ImportError(
            f"{source}: 'ema' is {_kind_hint(ema)}, expected a persisted EDM2 'Precond' network.{hint}"
        )
    modules: dict[str, ModuleRecord] = {}
    tensors: dict[str, torch.Tensor] = {}
    buffers: set[str] = set()
    _walk(ema, "", modules, tensors, buffers)
    encoder, loss_fn = data.get("encoder"), data.get("loss_fn")
    for name, obj in (("encoder", encoder), ("loss_fn", loss_fn)):
        if obj is not None and not isinstance(obj, PersistentObject):
            raise Edm2ImportError(f"{source}: '{name}' is {_kind_hint(obj)}, expected a persisted EDM2 object")
        if obj is not None:
            _check_persistent(obj, name)
    dataset_kwargs = data.get("dataset_kwargs")
    return Edm2Snapshot(
        source=source,
        tensors=tensors,
        buffers=buffers,
        modules=modules,
        encoder=encoder,
        loss_fn=loss_fn,
        dataset_kwargs=dict(dataset_kwargs) if isinstance(dataset_kwargs, dict) else None,
        keys=keys,
        module_sha256=ema.module_sha256,
    )


def read_snapshot(path: str) -> Edm2Snapshot:
    """Read an EDM2 snapshot pickle (local path or fsspec URL) without executing anything from it."""
    return interpret_snapshot(load_pickle(path), path)
