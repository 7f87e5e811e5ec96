"""Feature detectors for FID (Inception-v3) and FD_DINOv2 (DINOv2 ViT-L/14), loaded from LOCAL files.

Clusters are often offline, so nothing is downloaded here: a missing file raises `DetectorFileError` naming the
expected file and where to get it. A detector maps uint8 images [N,3,H,W] (any resolution) to float32 features
[N,D]; TF32 is off while it runs (`stats.no_tf32`).

* Inception-v3: NVIDIA's TorchScript `inception-2015-12-05.pt` (StyleGAN2-ADA), a direct translation of the
  TensorFlow graph including its resize to 299x299, called as `model(images, return_features=True)` on uint8
  images at their native resolution (never pre-resized; docs/evaluation.md). EDM2 and ECT load the same
  network from the StyleGAN3 pickle `inception-2015-12-05.pkl`; that pickle rebuilds classes from source code
  stored inside it (EDM2's `torch_utils.persistence`), so it is loaded only when explicitly trusted.
* DINOv2 ViT-L/14: the `dinov2_vitl14` entry point of a local clone of facebookresearch/dinov2, built with
  `pretrained=False` and loaded from a local `dinov2_vitl14_pretrain.pth`. Preprocessing as EDM2's default
  (NVlabs/edm2 calculate_metrics.py, DINOv2Detector): bicubic antialiased resize to 224x224 in float, /255, ImageNet
  mean/std; the CLS feature.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Optional

import torch

from ect_scale.data.storage import file_sha256  # noqa: F401  (also part of this module's API)
from ect_scale.eval.detector_base import Detector, DetectorFileError  # noqa: F401  (re-exported)

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_PKL_URL = (
    "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl"
)
DINOV2_REPO_URL = "https://github.com/facebookresearch/dinov2"
DINOV2_FILE = "dinov2_vitl14_pretrain.pth"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METRICS = ("fid", "fd_dinov2", "fd_classifier")  # fd_classifier: development metric, eval/classifier.py.


# ----------------------------------------------------------------------------
# Inception-v3 (FID).


def _missing_inception(path: str) -> DetectorFileError:
    return DetectorFileError(
        f"Inception-v3 weights not found: {path}. Fix: download NVIDIA's TorchScript {INCEPTION_FILE} from "
        f"{INCEPTION_URL} on a machine with network access, copy it here and pass its path "
        "(eval.inception_path / --inception)"
    )


def _load_trusted_pickle(path: str) -> torch.nn.Module:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)  # noqa: S301 - explicitly trusted by the caller
    except ModuleNotFoundError as e:
        raise DetectorFileError(
            f"{path}: unpickling needs module '{e.name}' (EDM2/StyleGAN3 `dnnlib`/`torch_utils` on PYTHONPATH). "
            f"Fix: use the TorchScript {INCEPTION_FILE} ({INCEPTION_URL}) instead; it is the same network"
        ) from None


class InceptionV3Detector(Detector):
    """NVIDIA's Inception-v3 (2048-d pool features) from a local TorchScript `.pt` (or a trusted `.pkl`)."""

    metric = "fid"

    def __init__(self, path: Optional[str], device="cpu", trust_pickle: bool = False):
        if not path or not os.path.isfile(path):
            raise _missing_inception(path or "(not set)")
        if path.endswith(".pkl"):
            if not trust_pickle:
                raise DetectorFileError(
                    f"{path}: the StyleGAN3/EDM2 pickle ({INCEPTION_PKL_URL}) executes code stored in the file when "
                    f"loaded. Fix: use the TorchScript {INCEPTION_FILE} from {INCEPTION_URL} (the same network), or "
                    "pass trust_pickle=True / --trust-pickle if you trust this file and have EDM2's code on PYTHONPATH"
                )
            model = _load_trusted_pickle(path)
        else:
            try:
                with warnings.catch_warnings():  # NVIDIA ships TorchScript; torch deprecates jit.load itself.
                    warnings.filterwarnings("ignore", category=DeprecationWarning)
                    model = torch.jit.load(path, map_location="cpu")
            except RuntimeError as e:
                raise DetectorFileError(
                    f"{path}: not a TorchScript file ({str(e).splitlines()[0]}). Fix: download "
                    f"{INCEPTION_FILE} again from {INCEPTION_URL}"
                ) from None
        super().__init__(model, device, path)

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, return_features=True)  # Resizes to 299x299 inside, as TensorFlow did.


# ----------------------------------------------------------------------------
# DINOv2 ViT-L/14 (FD_DINOv2).


def _check_dinov2_files(repo_dir: Optional[str], weights: Optional[str]) -> None:
    if not repo_dir or not os.path.isfile(os.path.join(repo_dir, "hubconf.py")):
        raise DetectorFileError(
            f"DINOv2 code not found: {repo_dir or '(not set)'} has no hubconf.py. Fix: `git clone {DINOV2_REPO_URL}` "
            "on a machine with network access, copy the clone here and pass it (eval.dinov2_repo / --dinov2-repo)"
        )
    if not weights or not os.path.isfile(weights):
        raise DetectorFileError(
            f"DINOv2 ViT-L/14 weights not found: {weights or '(not set)'}. Fix: download {DINOV2_FILE} from "
            f"{DINOV2_URL} and pass its path (eval.dinov2_path / --dinov2-weights)"
        )


def load_dinov2_vitl14(repo_dir: Optional[str], weights: Optional[str]) -> torch.nn.Module:
    """`dinov2_vitl14` from a local torch.hub repo directory, weights from a local file; no network access."""
    _check_dinov2_files(repo_dir, weights)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "xFormers is not available")
        model = torch.hub.load(repo_dir, "dinov2_vitl14", source="local", pretrained=False, verbose=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "mask_token" not in k]  # Unused at inference.
    if missing or unexpected:
        raise DetectorFileError(
            f"{weights}: does not match dinov2_vitl14 (missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}). Fix: download {DINOV2_FILE} from {DINOV2_URL}"
        )
    return model


class DINOv2Detector(Detector):
    """DINOv2 ViT-L/14 CLS features (1024-d) with EDM2's default preprocessing."""

    metric = "fd_dinov2"

    def __init__(self, repo_dir: Optional[str], weights: Optional[str], device="cpu"):
        super().__init__(load_dinov2_vitl14(repo_dir, weights), device, weights)

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(images.to(torch.float32), size=(224, 224), mode="bicubic", antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return self.model((x / 255 - mean) / std)


# ----------------------------------------------------------------------------


def build_detectors(
    metrics,
    device,
    inception_path: Optional[str] = None,
    dinov2_repo: Optional[str] = None,
    dinov2_path: Optional[str] = None,
    trust_pickle: bool = False,
    classifier_path: Optional[str] = None,
) -> dict[str, Detector]:
    """metric name -> detector, for `metrics` ⊆ METRICS. Every rank loads its own copy."""
    out: dict[str, Detector] = {}
    for metric in metrics:
        if metric == "fid":
            out[metric] = InceptionV3Detector(inception_path, device, trust_pickle=trust_pickle)
        elif metric == "fd_dinov2":
            out[metric] = DINOv2Detector(dinov2_repo, dinov2_path, device)
        elif metric == "fd_classifier":
            from ect_scale.eval.classifier import ClassifierDetector

            out[metric] = ClassifierDetector(classifier_path, device)
        else:
            raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return out
