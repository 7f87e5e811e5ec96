"""A restricted unpickler for NVIDIA's EDM2 snapshot pickles: it rebuilds data, never code.

EDM2 pickles are written with NVIDIA's `torch_utils.persistence`: every network class is reduced to
`_reconstruct_persistent_obj(meta)`, where `meta` holds the *source code of the defining module*, the class name,
the persistence version and the object's `__dict__` (parameters, buffers, submodules, init args). The official
loader `exec`s that source. Here, `find_class` answers only the globals listed in `allowed_globals()`, each with
a stand-in that validates its arguments:

  * `torch_utils.persistence._reconstruct_persistent_obj` -> `PersistentObject` (class name, version, init
    args/kwargs, state, and a SHA-256 of the module source, which is kept as text and never executed);
  * tensor rebuilds (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter[_with_state]`) -> plain CPU tensors;
    storages (`torch.storage._load_from_bytes`) are read with `torch.load(weights_only=True)`;
  * `numpy` array/dtype/scalar reconstruction, numeric dtypes only;
  * `collections.OrderedDict`, `builtins.set/frozenset`, `_codecs.encode` (protocol-2 bytes);
  * `dnnlib.util.EasyDict` and torch containers (`ModuleDict`, `ModuleList`, `Sequential`) -> inert stand-in
    classes, created fresh for every load so a hostile BUILD cannot alter them for later loads.

Anything else raises `UnsafePickleError` naming the global (module.name). Persistent IDs are refused too.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import hashlib
import io
import pickle
import re
import warnings
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from ect_scale.runtime.errors import UserError


class Edm2ImportError(UserError, ValueError):
    """A file is not an importable EDM2 snapshot. The message says what was found, what was expected, and the fix."""


class UnsafePickleError(Edm2ImportError):
    """The pickle references a global (function or class) the restricted unpickler does not allow."""


# ----------------------------------------------------------------------------
# Stand-ins for persisted objects.


class PersistentObject:
    """What `persistence._reconstruct_persistent_obj(meta)` would have rebuilt, as inert data.

    `state` is the object's `__dict__` (for modules: `_parameters`, `_buffers`, `_modules`, attributes, and
    `_init_args`/`_init_kwargs` recorded by the persistence decorator). `module_src` is kept as text only.
    """

    __slots__ = ("class_name", "version", "kind", "module_src", "module_sha256", "state")

    def __init__(self, meta: dict):
        if not isinstance(meta, dict):
            raise UnsafePickleError(f"persistence meta must be a dict, found {type(meta).__name__}")
        src = meta.get("module_src", "")
        name = meta.get("class_name")
        self.class_name = name if isinstance(name, str) else f"<{type(name).__name__}>"
        self.version = meta.get("version")
        self.kind = meta.get("type")
        self.module_src = src if isinstance(src, str) else ""
        self.module_sha256 = hashlib.sha256(self.module_src.encode("utf-8", "replace")).hexdigest()
        state = meta.get("state")
        self.state = dict(state) if isinstance(state, dict) else {}

    @property
    def init_args(self) -> tuple:
        args = self.state.get("_init_args")
        return tuple(args) if isinstance(args, (list, tuple)) else ()

    @property
    def init_kwargs(self) -> dict:
        kwargs = self.state.get("_init_kwargs")
        return dict(kwargs) if isinstance(kwargs, dict) else {}

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("the pickle tries to BUILD state into a persistent object; EDM2 pickles never do")

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name!r}, version={self.version})"


class ForeignObject:
    """An instance of a recognised, non-persistent class (e.g. `torch.nn.ModuleDict`), kept as its state dict."""

    global_name = "?"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafePickleError(f"state of {self.global_name} must be a dict, found {type(state).__name__}")
        object.__setattr__(self, "state", dict(state))

    def __repr__(self) -> str:
        return f"ForeignObject({self.global_name!r})"


class _Call:
    """An allowed callable: validates its arguments, then builds the value. Immune to BUILD (no `__dict__`)."""

    __slots__ = ("global_name", "fn")

    def __init__(self, global_name: str, fn: Callable):
        self.global_name, self.fn = global_name, fn

    def __call__(self, *args):
        try:
            return self.fn(*args)
        except Edm2ImportError:
            raise
        except Exception as e:  # Damaged arguments: say which global rejected them.
            raise Edm2ImportError(
                f"{self.global_name}: malformed arguments in the pickle ({type(e).__name__}: {e})"
            ) from None

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"the pickle tries to modify the allowed global {self.global_name}")


# ----------------------------------------------------------------------------
# Validated rebuild functions.

_NUMERIC_DTYPE = re.compile(r"[<>|=]?[biufc?][0-9]*")


def _load_storage(blob: Any):
    """`torch.storage._load_from_bytes`: a legacy `torch.save` of one storage, read with torch's safe loader."""
    if not isinstance(blob, (bytes, bytearray)):
        raise UnsafePickleError(f"torch.storage._load_from_bytes expects bytes, found {type(blob).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation warnings.
            storage = torch.load(io.BytesIO(bytes(blob)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(
            f"an embedded tensor storage was refused by torch.load(weights_only=True): {e}"
        ) from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f"an embedded tensor blob holds {type(storage).__name__}, expected a storage")
    return storage


def _check_ints(value: Any, what: str) -> tuple:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise UnsafePickleError(f"tensor {what} must be a tuple of non-negative ints, found {value!r}")
    return tuple(value)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None, *extra):
    """`torch._utils._rebuild_tensor_v2`: a strided view of a storage, bounds-checked, without hooks."""
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError(f"_rebuild_tensor_v2 expects a typed storage, found {type(storage).__name__}")
    size, stride = _check_ints(size, "size"), _check_ints(stride, "stride")
    if not isinstance(offset, int) or offset < 0 or len(size) != len(stride) or extra:
        raise UnsafePickleError(
            f"_rebuild_tensor_v2: malformed arguments (offset {offset!r}, size {size}, stride {stride})"
        )
    if hooks:
        raise UnsafePickleError("_rebuild_tensor_v2: tensors with backward hooks are not accepted")
    if metadata and not (isinstance(metadata, dict) and all(isinstance(v, bool) for v in metadata.values())):
        raise UnsafePickleError(f"_rebuild_tensor_v2: unexpected tensor metadata {metadata!r}")
    numel = storage._untyped_storage.nbytes() // torch.empty((), dtype=storage.dtype).element_size()
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if extent > numel:
        raise UnsafePickleError(f"_rebuild_tensor_v2: view of {extent} elements exceeds its storage ({numel})")
    t = torch.empty((0,), dtype=storage.dtype)
    t.set_(storage._untyped_storage, offset, size, stride)
    if metadata:
        torch._utils.set_tensor_metadata(t, metadata)
    return t


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None, *extra):
    """`torch._utils._rebuild_parameter[_with_state]`: the parameter's data as a plain tensor."""
    if not isinstance(data, torch.Tensor) or hooks or extra:
        raise UnsafePickleError(
            f"_rebuild_parameter: malformed arguments (data {type(data).__name__}, hooks {hooks!r})"
        )
    return data


def _numpy_dtype(code, align=False, copy=True):
    """`numpy.dtype(code, ...)` for numeric dtypes only (object/void dtypes could smuggle Python objects)."""
    if not isinstance(code, str) or not _NUMERIC_DTYPE.fullmatch(code):
        raise UnsafePickleError(f"numpy.dtype: only numeric dtypes are accepted, found {code!r}")
    return np.dtype(code)


def _numpy_reconstruct(cls, shape, typecode):
    """`numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`: an empty array that BUILD then fills."""
    if not (isinstance(cls, _Call) and cls.global_name == "numpy.ndarray") or tuple(shape) != (0,) or typecode != b"b":
        raise UnsafePickleError(
            f"numpy _reconstruct: expected (numpy.ndarray, (0,), b'b'), found ({cls!r}, {shape!r}, {typecode!r})"
        )
    return np.ndarray.__new__(np.ndarray, (0,), "b")


def _numpy_frombuffer(buf, dtype, shape, order="C"):
    """`numpy._core.numeric._frombuffer`: protocol-5 in-band arrays."""
    if (
        not isinstance(dtype, np.dtype)
        or dtype.kind not in "biufc?"
        or not isinstance(buf, (bytes, bytearray))
        or order not in ("C", "F")
    ):
        raise UnsafePickleError(f"numpy _frombuffer: only numeric arrays from bytes are accepted, found {dtype!r}")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(_check_ints(shape, "shape"), order=order).copy()


def _not_callable(*args):
    raise UnsafePickleError("numpy.ndarray may only be passed to numpy's _reconstruct, not called")


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc?" or not isinstance(data, bytes):
        raise UnsafePickleError(f"numpy scalar: only numeric scalars are accepted, found {dtype!r}")
    return np.frombuffer(data, dtype=dtype)[0]


def _hashable_collection(kind: type) -> Callable:
    def build(items=()):
        if not isinstance(items, (list, tuple)):
            raise UnsafePickleError(f"builtins.{kind.__name__} expects a list, found {type(items).__name__}")
        return kind(items)

    return build


def _codecs_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode: only latin1 text (protocol-2 bytes) is accepted, found {encoding!r}")
    return codecs.encode(text, encoding)


_CALLABLES: dict[str, Callable] = {
    "torch_utils.persistence._reconstruct_persistent_obj": PersistentObject,
    "torch.storage._load_from_bytes": _load_storage,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "numpy.core.multiarray._reconstruct": _numpy_reconstruct,  # numpy 1.x
    "numpy._core.multiarray._reconstruct": _numpy_reconstruct,  # numpy 2.x
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "numpy.core.numeric._frombuffer": _numpy_frombuffer,
    "numpy._core.numeric._frombuffer": _numpy_frombuffer,
    "numpy.dtype": _numpy_dtype,
    "numpy.ndarray": _not_callable,  # A token for _reconstruct's first argument.
    "builtins.set": _hashable_collection(set),
    "builtins.frozenset": _hashable_collection(frozenset),
    "_codecs.encode": _codecs_encode,
}
# Immutable C types, returned as themselves (NEWOBJ needs a real class; BUILD cannot alter an immutable type).
_TYPES: dict[str, type] = {"collections.OrderedDict": collections.OrderedDict}
# Recognised classes rebuilt as inert stand-ins; EasyDict is a dict subclass holding the snapshot's entries.
_DICT_CLASSES = ("dnnlib.util.EasyDict", "dnnlib.EasyDict")
_FOREIGN_CLASSES = (
    "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential",
)


def allowed_globals() -> list[str]:
    """Every `module.name` the restricted unpickler accepts."""
    return sorted([*_CALLABLES, *_TYPES, *_DICT_CLASSES, *_FOREIGN_CLASSES])


# ----------------------------------------------------------------------------


def _refuse_state(self, state: Any) -> None:
    if state:
        raise UnsafePickleError(
            f"the pickle tries to BUILD attributes into {type(self).__name__}; EDM2 pickles never do"
        )


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` answers only `allowed_globals()`, with validating stand-ins."""

    def __init__(self, file: BinaryIO, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source
        self._classes: dict[str, type] = {}  # Stand-in classes, fresh per load.

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 names written by protocols < 3 (`__builtin__.set`), mapped as pickle's own find_class does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = f"{module}.{name}"
        if key in _CALLABLES:
            return _Call(key, _CALLABLES[key])
        if key in _TYPES:
            return _TYPES[key]
        if key in _DICT_CLASSES or key in _FOREIGN_CLASSES:
            if key not in self._classes:
                is_dict = key in _DICT_CLASSES
                base, attrs = ((dict,), {"__setstate__": _refuse_state}) if is_dict else ((ForeignObject,), {})
                self._classes[key] = type(name, base, {**attrs, "global_name": key, "__module__": __name__})
            return self._classes[key]
        raise UnsafePickleError(
            f"{self.source}: refused to load global '{key}'. The pickle asks for a function or class that an EDM2 "
            f"snapshot does not contain, and nothing from the pickle has been executed. Allowed globals: "
            f"{', '.join(allowed_globals())}. Fix: only import pickles from a source you trust; if this really is an "
            "NVIDIA EDM2/ECT snapshot written by newer torch or numpy, report this global name"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self.source}: refused a persistent id ({str(pid)[:80]!r}); EDM2 snapshot pickles "
            "contain none (a torch.save archive is not a snapshot pickle)"
        )


def safe_load(file: BinaryIO, source: str = "<pickle>") -> Any:
    """Unpickle `file` with `RestrictedUnpickler`; malformed streams raise `Edm2ImportError`."""
    try:
        return RestrictedUnpickler(file, source).load()
    except Edm2ImportError as e:
        if str(e).startswith(f"{source}: "):
            raise
        raise type(e)(f"{source}: {e}") from None
    except MemoryError:
        raise Edm2ImportError(
            f"{source}: ran out of memory while unpickling. Either the file is damaged (a length "
            "field asks for an impossible allocation) or this machine has too little RAM for the "
            "network (docs/import.md lists the memory needed). Fix: re-download the file, or run "
            "on a machine with more memory"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        RuntimeError,
        UnicodeDecodeError,
        OverflowError,
        RecursionError,
    ) as e:
        raise Edm2ImportError(
            f"{source}: not a readable pickle ({type(e).__name__}: {e}). Expected an EDM2 snapshot "
            "pickle (network-snapshot-*.pkl or a posthoc-reconstructions/*.pkl). Fix: check that "
            "the download is complete and that this is the .pkl file"
        ) from None
