"""tools/sample.py from a network file: PNG grid and .npz, per-seed determinism, fixed classes, clear errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from ect_scale.networks.netfile import save_network_file
from tests.conftest import REPO


@pytest.fixture
def net_file(tmp_path, tiny_config):
    """A tiny 1-channel pixel network (like the quickstart's) with non-zero gains, saved as a network file."""
    from ect_scale.networks import build_network

    torch.manual_seed(3)
    net = build_network(tiny_config(preset="tiny-pixel", img_channels=1, img_resolution=8, attn_resolutions=[4]))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(0.8)
    path = str(tmp_path / "net.safetensors")
    save_network_file(path, net.state_dict(), net.config, meta={"encoder": {"kind": "pixels", "channels": 1}})
    return path


def _sample(*args):
    proc = subprocess.run(
        [sys.executable, "tools/sample.py", *args, "--device", "cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc


def test_grid_npz_and_per_seed_determinism(net_file, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    proc = _sample(
        "--net",
        net_file,
        "--steps",
        "2",
        "--t-mid",
        "1.5",
        "--seeds",
        "0-5",
        "--npz",
        str(a),
        "--grid",
        str(tmp_path / "g.png"),
        "--batch",
        "4",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        _sample(
            "--net", net_file, "--steps", "2", "--t-mid", "1.5", "--seeds", "3-8", "--npz", str(b), "--batch", "2"
        ).returncode
        == 0
    )
    da, db = np.load(a), np.load(b)
    assert da["images"].shape == (6, 8, 8, 3) and da["images"].dtype == np.uint8  # Grayscale decodes to RGB.
    assert list(da["seeds"]) == [0, 1, 2, 3, 4, 5]
    # Seeds 3-5 give the same samples whatever the batch they are in.
    np.testing.assert_array_equal(da["images"][3:], db["images"][:3])
    np.testing.assert_array_equal(da["labels"][3:], db["labels"][:3])
    from PIL import Image

    grid = np.asarray(Image.open(tmp_path / "g.png"))
    # 3 x 2 cells of 8 px magnified 4x (cells >= 32 px) with 2 px grey gutters around and between them.
    assert grid.shape == (2 + 2 * 34, 2 + 3 * 34, 3) and (grid[0] == 128).all()


def test_fixed_classes_per_row_and_heun(net_file, tmp_path):
    out = tmp_path / "c.npz"
    proc = _sample(
        "--net",
        net_file,
        "--sampler",
        "euler",
        "--heun-steps",
        "3",
        "--classes",
        "2-4",
        "--per-class",
        "2",
        "--npz",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = np.load(out)
    assert list(data["labels"]) == [2, 2, 3, 3, 4, 4] and data["images"].shape[0] == 6


@pytest.mark.slow  # ~10 s of launcher subprocesses.
def test_errors_are_one_line(net_file, tmp_path):
    proc = _sample("--net", net_file, "--steps", "2", "--grid", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "--t-mid" in proc.stderr and "Traceback" not in proc.stderr
    proc = _sample("--net", str(tmp_path / "missing.safetensors"), "--grid", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = _sample("--net", net_file, "--classes", "12", "--npz", str(tmp_path / "x.npz"))
    assert proc.returncode == 2 and "--classes" in proc.stderr
