"""The restricted unpickler: hostile pickles are refused (naming the global) and never run; data round-trips."""

import io
import os
import pickle
import re
import subprocess
from collections import OrderedDict

import numpy as np
import pytest
import torch

from ect_scale.edm2_import import Edm2ImportError, UnsafePickleError, read_snapshot, safe_load
from tests.edm2_import.edm2_pickles import write_snapshot


class Reduce:
    """Pickles as `fn(*args)`: what a hostile pickle looks like on the wire."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def load(blob: bytes):
    return safe_load(io.BytesIO(blob), "test.pkl")


def hostile_payloads(marker: str):
    """(pickle bytes, global name) pairs; each one creates `marker` when loaded with plain `pickle`."""
    touch = f"open({marker!r}, 'w').write('pwned')"
    return [
        (pickle.dumps(Reduce(os.system, f"touch {marker}")), f"{os.system.__module__}.system"),
        (pickle.dumps(Reduce(eval, touch)), "builtins.eval"),
        (pickle.dumps(Reduce(exec, touch)), "builtins.exec"),
        (pickle.dumps(Reduce(subprocess.check_call, ["touch", marker])), "subprocess.check_call"),
        (f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(), "os.system"),  # Protocol 0, GLOBAL opcode.
    ]


@pytest.mark.parametrize("index", range(5))
def test_hostile_globals_are_refused_and_do_not_run(tmp_path, index):
    marker = str(tmp_path / "pwned")
    blob, name = hostile_payloads(marker)[index]
    with pytest.raises(UnsafePickleError, match=re.escape(f"refused to load global '{name}'")):
        load(blob)
    assert not os.path.exists(marker)
    pickle.loads(blob)  # The payload is live: the standard unpickler runs it.
    assert os.path.exists(marker)


def test_hostile_object_inside_a_real_snapshot_is_refused(tiny_net, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "snap.pkl"
    evil = Reduce(os.system, f"touch {marker}")
    write_snapshot(path, tiny_net(), extra_entries={"loss_fn": evil})
    with pytest.raises(UnsafePickleError, match="system'"):
        read_snapshot(str(path))
    write_snapshot(path, tiny_net(), precond_extra_kwargs={"evil": evil})  # Deep inside the network's state.
    with pytest.raises(UnsafePickleError, match="system'"):
        read_snapshot(str(path))
    assert not marker.exists()


def test_hostile_tensor_storage_blob_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps(Reduce(torch.storage._load_from_bytes, pickle.dumps(Reduce(os.system, f"touch {marker}"))))
    with pytest.raises(UnsafePickleError, match="weights_only"):
        load(blob)
    assert not marker.exists()


def test_build_cannot_modify_allowed_globals_or_stand_ins():
    with pytest.raises(UnsafePickleError, match="modify the allowed global torch._utils._rebuild_tensor_v2"):
        load(b"ctorch._utils\n_rebuild_tensor_v2\n}b.")
    with pytest.raises(Edm2ImportError):  # BUILD on a stand-in class object.
        load(b"cdnnlib.util\nEasyDict\n(}(S'__eq__'\nI1\ndtb.")
    with pytest.raises(UnsafePickleError, match="BUILD"):
        load(b"\x80\x04cdnnlib.util\nEasyDict\n)\x81}(S'x'\nI1\nub.")
    assert load(pickle.dumps(OrderedDict(a=1))) == OrderedDict(a=1)


def test_persistent_ids_object_dtypes_and_bad_views_are_refused():
    with pytest.raises(UnsafePickleError, match="persistent id"):
        load(b"Pstorage0\n.")
    with pytest.raises(UnsafePickleError, match="only numeric dtypes"):
        load(pickle.dumps(np.array([1, "a"], dtype=object)))
    small = torch.arange(4, dtype=torch.float16)
    storage = torch.storage.TypedStorage(wrap_storage=small.untyped_storage(), dtype=small.dtype, _internal=True)
    view = Reduce(torch._utils._rebuild_tensor_v2, storage, 0, (100,), (1,), False, OrderedDict())
    with pytest.raises(UnsafePickleError, match="exceeds its storage"):
        load(pickle.dumps(view))


def test_allowed_data_round_trips():
    base = torch.randn(6, 5)
    data = {
        "w": torch.nn.Parameter(torch.randn(3, 4).half(), requires_grad=False),
        "view": base[1:4, ::2],
        "arr": np.arange(4, dtype=np.float32),
        "scalar": np.float32(0.5),
        "s": {1, 2},
        "f": frozenset({3}),
        "od": OrderedDict(x=(1, 2.5, None, "t")),
    }
    for protocol in (2, 4, 5):
        out = load(pickle.dumps(data, protocol=protocol))
        assert type(out["w"]) is torch.Tensor and torch.equal(out["w"], data["w"].detach())
        assert torch.equal(out["view"], data["view"])
        assert np.array_equal(out["arr"], data["arr"]) and out["scalar"] == np.float32(0.5)
        assert out["s"] == {1, 2} and out["f"] == frozenset({3}) and out["od"] == data["od"]


def test_malformed_streams_give_a_clear_error():
    for blob in (b"", b"\x80\x04\x95garbage", b"not a pickle at all"):
        with pytest.raises(Edm2ImportError, match="not a readable pickle"):
            load(blob)


def test_damaged_snapshots_fail_with_import_errors_only(tiny_net, tmp_path):
    """Random byte damage to the pickle's opcodes (not tensor payloads) must end in Edm2ImportError or succeed."""
    import pickletools
    import random

    from ect_scale.edm2_import import convert_snapshot, interpret_snapshot

    write_snapshot(tmp_path / "s.pkl", tiny_net(), module_src="x")
    blob = (tmp_path / "s.pkl").read_bytes()
    spots = [pos + i for op, arg, pos in pickletools.genops(blob) for i in range(4 if "BYTES" in op.name else 2)]
    rng, failures = random.Random(0), 0
    for _ in range(150):
        damaged = bytearray(blob)
        for pos in rng.sample(spots, 2):
            damaged[min(pos, len(blob) - 1)] = rng.randrange(256)
        try:
            convert_snapshot(interpret_snapshot(load(bytes(damaged)), "s.pkl"))
        except Edm2ImportError:
            failures += 1
    assert failures > 100  # Most damage is detected; none escapes as another exception type.
