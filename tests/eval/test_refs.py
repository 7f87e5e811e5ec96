"""Reference statistics: EDM2's published pickle format, EDM's .npz, ours; unsafe pickles refused; S3 paths."""

import os
import pickle

import numpy as np
import pytest

from ect_scale.eval.refs import ReferenceStatsError, load_reference, save_reference
from ect_scale.eval.stats import GaussianStats


def _edm2_dict(dtype=np.float64):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(4, 4))
    return {
        "fid": {"mu": rng.normal(size=6).astype(dtype), "sigma": (a @ a.T).astype(dtype)},
        "fd_dinov2": {"mu": rng.normal(size=4).astype(dtype), "sigma": (b @ b.T).astype(dtype)},
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_edm2_pickle_loads_directly(tmp_path, protocol):
    """EDM2's img512.pkl/img64.pkl: a plain pickle of {metric: {mu, sigma}} numpy arrays (any protocol)."""
    raw = _edm2_dict(np.float32 if protocol == 2 else np.float64)
    path = tmp_path / "img512.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=protocol))
    ref = load_reference(str(path))
    assert set(ref.stats) == {"fid", "fd_dinov2"} and len(ref.sha256) == 64
    np.testing.assert_array_equal(ref.stats["fid"].sigma, raw["fid"]["sigma"].astype(np.float64))
    assert ref.stats["fd_dinov2"].mu.dtype == np.float64 and ref.stats["fd_dinov2"].feature_dim == 4


def test_hostile_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"fid": {"mu": Exploit(), "sigma": np.eye(2)}}))
    with pytest.raises(ReferenceStatsError, match="refusing to unpickle 'posix.system'"):
        load_reference(str(path))
    assert not marker.exists()


def test_edm_npz_and_our_formats_round_trip(tmp_path):
    raw = _edm2_dict()
    edm = tmp_path / "cifar10-32x32.npz"
    np.savez(edm, mu=raw["fid"]["mu"], sigma=raw["fid"]["sigma"])
    assert set(load_reference(str(edm)).stats) == {"fid"}
    stats = {k: GaussianStats(mu=v["mu"], sigma=v["sigma"], num=1234) for k, v in raw.items()}
    for name in ("ours.npz", "ours.pkl"):
        sha = save_reference(str(tmp_path / name), stats, meta={"data": "somewhere"})
        ref = load_reference(str(tmp_path / name))
        assert ref.sha256 == sha
        assert {k: v.num for k, v in ref.stats.items()} == {"fid": 1234, "fd_dinov2": 1234}
        np.testing.assert_array_equal(ref.stats["fd_dinov2"].sigma, raw["fd_dinov2"]["sigma"])
    assert load_reference(str(tmp_path / "ours.npz")).meta == {"data": "somewhere"}
    with pytest.raises(ReferenceStatsError, match=r"\.pkl \(EDM2 format\) or \.npz"):
        save_reference(str(tmp_path / "ours.json"), stats)


def test_errors_name_the_file_the_metric_and_the_fix(tmp_path):
    with pytest.raises(ReferenceStatsError, match=r"not found: .*nope\.pkl.*img512\.pkl.*tools/fid_ref\.py"):
        load_reference(str(tmp_path / "nope.pkl"))
    path = tmp_path / "fid-only.pkl"
    path.write_bytes(pickle.dumps({"fid": _edm2_dict()["fid"]}))
    ref = load_reference(str(path))
    with pytest.raises(ReferenceStatsError, match=r"no 'fd_dinov2' statistics \(it has: fid\)"):
        ref.require("fd_dinov2")
    with pytest.raises(ReferenceStatsError, match="6-d but the detector gives 2048-d"):
        ref.require("fid", 2048)
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(ReferenceStatsError, match="not a readable pickle"):
        load_reference(str(tmp_path / "junk.pkl"))


def test_reference_statistics_on_s3(s3_bucket):
    """Write and read through s3fs against the loopback S3 server (real HTTP, no in-process mocks)."""
    raw = _edm2_dict()
    stats = {k: GaussianStats(mu=v["mu"], sigma=v["sigma"], num=10) for k, v in raw.items()}
    url = f"{s3_bucket}/refs/img512-ours.pkl"
    sha = save_reference(url, stats)
    ref = load_reference(url)
    assert ref.sha256 == sha and ref.path == url
    np.testing.assert_array_equal(ref.stats["fid"].mu, raw["fid"]["mu"])
