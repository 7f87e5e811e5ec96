"""Expected failures are recognised and worded as `<what>. Fix: <how>`; anything else is left alone (a bug)."""

import errno
import pickle

import pytest
import torch

from ect_scale.checkpoint import CheckpointError
from ect_scale.config import ConfigError
from ect_scale.data import ManifestError, StorageError
from ect_scale.eval.detectors import DetectorFileError
from ect_scale.networks.netfile import NetworkFileError
from ect_scale.runtime.errors import PeerLostError, UserError, user_error_of


def test_user_error_text_and_parts():
    e = UserError("data.url: s3://x is missing", "check the bucket")
    assert str(e) == "data.url: s3://x is missing. Fix: check the bucket"
    assert e.what == "data.url: s3://x is missing" and e.fix == "check the bucket"
    assert str(UserError("already worded. Fix: as is")) == "already worded. Fix: as is"


@pytest.mark.parametrize(
    "cls", [ConfigError, StorageError, CheckpointError, NetworkFileError, ManifestError, DetectorFileError]
)
def test_package_errors_are_user_errors_and_keep_their_old_types(cls):
    e = cls("x. Fix: y")
    assert isinstance(e, UserError) and user_error_of(e) is e
    assert isinstance(ConfigError("x"), ValueError) and isinstance(StorageError("x"), RuntimeError)
    assert isinstance(DetectorFileError("x"), FileNotFoundError)


def test_storage_error_keeps_its_kind_across_processes():
    e = pickle.loads(pickle.dumps(StorageError("cannot read s3://b/x. Fix: y", "unreachable")))
    assert e.kind == "unreachable" and str(e) == "cannot read s3://b/x. Fix: y"


def test_expected_failures_from_others_are_translated():
    oom = user_error_of(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"))
    assert oom.what == "out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB)" and "batch_gpu" in oom.fix
    port = user_error_of(
        RuntimeError(
            "The server socket has failed to listen ... port: 29500, code: -98, "
            "name: EADDRINUSE, message: address already in use"
        )
    )
    assert "already in use" in port.what and "--master_port" in port.fix
    missing = user_error_of(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/init.safetensors"))
    assert str(missing).startswith("cannot access /x/init.safetensors: No such file or directory. Fix: check the path")
    full = user_error_of(OSError(errno.ENOSPC, "No space left on device", "/runs/x/ckpt"))
    assert "No space left" in full.what and "free space" in full.fix
    assert isinstance(user_error_of(RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:4242")), PeerLostError)
    assert str(user_error_of(ValueError("--seeds: bad. Fix: write 0-9"))) == "--seeds: bad. Fix: write 0-9"


@pytest.mark.parametrize(
    "exc", [ZeroDivisionError("x"), KeyError("k"), RuntimeError("shape mismatch"), ValueError("bad value")]
)
def test_bugs_are_not_user_errors(exc):
    assert user_error_of(exc) is None
