"""Detectors load from local files through the real loading paths (stand-in weights), preprocess as EDM2, and
fail with errors that name the expected file and where it comes from."""

import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F

from ect_scale.eval.detectors import (
    DINOV2_URL,
    INCEPTION_URL,
    DetectorFileError,
    DINOv2Detector,
    InceptionV3Detector,
    build_detectors,
)
from tests.eval.standins import InceptionStandin


def _images(n=3, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_inception_torchscript_called_with_return_features(detector_files):
    det = InceptionV3Detector(detector_files["inception"], "cpu")
    assert det.feature_dim == 24 and det.describe()["sha256"] is not None
    x = _images()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        reference = torch.jit.load(detector_files["inception"])(x, return_features=True)
    torch.testing.assert_close(det(x), reference, rtol=0, atol=0)
    assert det(_images(2, size=77)).shape == (2, 24)  # Any resolution: the model resizes inside.
    with pytest.raises(ValueError, match="expected uint8 images"):
        det(x.float())


def test_missing_inception_names_the_file_and_url(tmp_path):
    with pytest.raises(DetectorFileError) as e:
        InceptionV3Detector(str(tmp_path / "inception-2015-12-05.pt"), "cpu")
    assert "inception-2015-12-05.pt" in str(e.value) and INCEPTION_URL in str(e.value)
    with pytest.raises(DetectorFileError, match="not set"):
        build_detectors(["fid"], "cpu", inception_path=None)


def test_corrupt_inception_file_and_untrusted_pickle(tmp_path):
    bad = tmp_path / "inception-2015-12-05.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(DetectorFileError, match="not a TorchScript file"):
        InceptionV3Detector(str(bad), "cpu")
    pkl = tmp_path / "inception-2015-12-05.pkl"
    pkl.write_bytes(pickle.dumps(InceptionStandin()))
    with pytest.raises(DetectorFileError, match="executes code stored in the file"):
        InceptionV3Detector(str(pkl), "cpu")
    det = InceptionV3Detector(str(pkl), "cpu", trust_pickle=True)  # The user's explicit choice.
    assert det(_images()).shape == (3, 24)


def test_dinov2_from_local_hub_repo_with_edm2_preprocessing(detector_files):
    det = DINOv2Detector(detector_files["dinov2_repo"], detector_files["dinov2_weights"], "cpu")
    assert det.feature_dim == 20
    x = _images(2, size=64)
    features = det(x)
    expected = F.interpolate(x.float(), size=(224, 224), mode="bicubic", antialias=True) / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(det.model.last_input, (expected - mean) / std)
    state = torch.load(detector_files["dinov2_weights"], weights_only=True)
    torch.testing.assert_close(det.model.patch_embed.weight, state["patch_embed.weight"])  # Local weights loaded.
    assert features.shape == (2, 20) and torch.isfinite(features).all()


def test_dinov2_missing_files_and_wrong_weights(detector_files, tmp_path):
    with pytest.raises(
        DetectorFileError, match=r"no hubconf\.py.*git clone https://github.com/facebookresearch/dinov2"
    ):
        DINOv2Detector(str(tmp_path), detector_files["dinov2_weights"], "cpu")
    with pytest.raises(DetectorFileError) as e:
        DINOv2Detector(detector_files["dinov2_repo"], str(tmp_path / "dinov2_vitl14_pretrain.pth"), "cpu")
    assert "dinov2_vitl14_pretrain.pth" in str(e.value) and DINOV2_URL in str(e.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"something.else": torch.zeros(3)}, wrong)
    with pytest.raises(DetectorFileError, match="does not match dinov2_vitl14"):
        DINOv2Detector(detector_files["dinov2_repo"], str(wrong), "cpu")


def test_build_detectors_by_metric(detector_files):
    dets = build_detectors(
        ["fid", "fd_dinov2"],
        "cpu",
        inception_path=detector_files["inception"],
        dinov2_repo=detector_files["dinov2_repo"],
        dinov2_path=detector_files["dinov2_weights"],
    )
    assert {m: d.metric for m, d in dets.items()} == {"fid": "fid", "fd_dinov2": "fd_dinov2"}
    with pytest.raises(ValueError, match="unknown metric 'kid'"):
        build_detectors(["kid"], "cpu")
