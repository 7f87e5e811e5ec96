"""The offline development metric: the small classifier (train, save, load), its detector and reference
statistics through the CLIs (`tools/train_classifier.py`, `tools/fid_ref.py --shards`, `launchers/evaluate.py
--classifier`), and the class accuracy of samples (labels replayed from each seed's generator)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ect_scale.eval.classifier import (
    ClassifierDetector,
    SampleAccuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)
from ect_scale.eval.detectors import DetectorFileError
from tests.conftest import REPO


def _stripes(n: int, seed: int = 0):
    """Two easy classes of 8x8 RGB images: a bright top half, or a bright bottom half (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, (n,), generator=g)
    images = torch.randint(0, 60, (n, 3, 8, 8), generator=g)
    for i, y in enumerate(labels.tolist()):
        images[i, :, :4] += 180 if y == 0 else 0
        images[i, :, 4:] += 180 if y == 1 else 0
    return images.clamp(0, 255).to(torch.uint8), labels


def test_train_save_load_and_detector(tmp_path):
    images, labels = _stripes(200)
    model, report = train_classifier(images, labels, epochs=5, log=lambda *_: None)
    assert report["heldout_accuracy"] > 0.95 and report["heldout_images"] == 20
    path = str(tmp_path / "clf.safetensors")
    save_classifier(path, model, {"note": "test"})
    loaded, meta = load_classifier(path)
    assert meta["note"] == "test"
    torch.testing.assert_close(loaded(images[:5])[0], model(images[:5])[0])
    det = ClassifierDetector(path)
    assert det.metric == "fd_classifier" and det(images[:7]).shape == (7, det.feature_dim) and det.sha256
    assert (det.predict(images) == labels).float().mean() > 0.95
    with pytest.raises(DetectorFileError, match="train_classifier"):
        ClassifierDetector(str(tmp_path / "missing.safetensors"))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DetectorFileError, match="not a classifier file"):
        ClassifierDetector(str(tmp_path / "other.safetensors"))


class _LabelPainter(torch.nn.Module):
    """A 'network' whose output is a flat image whose grey level encodes its class label (for replay tests)."""

    label_dim, img_channels, img_resolution = 10, 1, 8

    def forward(self, x, sigma, labels=None):
        level = labels.argmax(1).to(x.dtype) * 0.2 - 0.9  # class k -> pixel value (k*0.2-0.9) in [-1, 1]
        return level.view(-1, 1, 1, 1).expand_as(x).clone()


class _GreyDetector:
    device = torch.device("cpu")

    def predict(self, images):
        return ((images.float().mean((1, 2, 3)) - 128) / 127.5 + 0.9).div(0.2).round().long()


def test_sample_accuracy_replays_each_seeds_label():
    from ect_scale.data.encoders import PixelEncoder
    from ect_scale.eval.sampling import SamplerSpec, sample_many

    net, enc, seeds = _LabelPainter(), PixelEncoder(1), np.arange(40)
    acc = SampleAccuracy(_GreyDetector(), net)
    for part in (seeds[:15], seeds[15:]):
        x = sample_many(net, part, [SamplerSpec()], "cpu")["1step"]
        acc("1step", part, enc.decode(x))
    assert acc.result() == {"1step": 1.0}  # Every sample has the class its seed drew (chance would be 0.1).


@pytest.mark.slow
def test_cli_shards_reference_and_evaluate(tmp_path, tiny_config):
    """make_shards --grayscale -> train_classifier -> fid_ref --shards -> evaluate --classifier."""
    from ect_scale.networks import build_network
    from ect_scale.networks.netfile import save_network_file

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    data, clf, ref = tmp_path / "data", tmp_path / "clf.safetensors", tmp_path / "ref.npz"

    def run(*cmd):
        proc = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    run(
        "tools/make_shards.py",
        "--source",
        "sklearn-digits",
        "--out",
        str(data),
        "--resolution",
        "8",
        "--pixels",
        "--grayscale",
        "--num-shards",
        "2",
        "--limit",
        "120",
    )
    run("tools/train_classifier.py", "--data", str(data / "manifest.json"), "--out", str(clf), "--epochs", "2")
    out = run(
        "tools/fid_ref.py",
        "--shards",
        str(data / "manifest.json"),
        "--classifier",
        str(clf),
        "--out",
        str(ref),
        "--progress",
        "none",
        "--workers",
        "0",
    )
    assert json.loads(out[out.index("{") :])["num_images"] == 120
    torch.manual_seed(0)
    net = build_network(tiny_config(preset="tiny-pixel", img_channels=1, img_resolution=8, attn_resolutions=[4]))
    save_network_file(
        str(tmp_path / "net.safetensors"),
        net.state_dict(),
        net.config,
        meta={"encoder": {"kind": "pixels", "channels": 1}},
    )
    out = run(
        "launchers/evaluate.py",
        "--net",
        str(tmp_path / "net.safetensors"),
        "--classifier",
        str(clf),
        "--ref",
        str(ref),
        "--num-samples",
        "40",
        "--steps",
        "1",
        "--progress",
        "none",
    )
    report = json.loads(out[out.index("{") :])
    assert report["networks"][0]["results"]["1step"]["fd_classifier"]["min"] > 0
    assert report["detectors"]["fd_classifier"]["detector"] == "ClassifierDetector"
