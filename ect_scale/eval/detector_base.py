"""The detector interface of the evaluation metrics: uint8 RGB images -> float32 features, TF32 off while it runs.
Implementations: `detectors` (Inception-v3 for FID, DINOv2 for FD_DINOv2) and `classifier` (the offline
development metric)."""

from __future__ import annotations

import abc
import os

import torch

from ect_scale.data.storage import file_sha256
from ect_scale.eval.stats import no_tf32
from ect_scale.runtime.errors import UserError


class DetectorFileError(UserError, FileNotFoundError):
    """A detector's weights are missing or unusable; the message says which file and where it comes from."""


class Detector(abc.ABC):
    """uint8 images [N,3,H,W] -> float32 features [N, feature_dim]."""

    metric: str = ""
    feature_dim: int = 0

    def __init__(self, model: torch.nn.Module, device, source: str):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        for p in self.model.parameters():  # (ScriptModules have no requires_grad_.)
            p.requires_grad_(False)
        self.source = source
        self.sha256 = file_sha256(source) if os.path.isfile(source) else None
        self.feature_dim = self._probe_feature_dim()

    @classmethod
    def from_module(cls, model: torch.nn.Module, device="cpu", source: str = "in-memory module") -> "Detector":
        """This detector's preprocessing around an already-built network (benchmarks with random weights)."""
        det = cls.__new__(cls)
        Detector.__init__(det, model, device, source)
        return det

    @abc.abstractmethod
    def _run(self, images: torch.Tensor) -> torch.Tensor: ...

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__}: expected uint8 images [N,3,H,W], got {images.dtype} "
                f"{list(images.shape)} (quantise samples with the encoder's decode() first)"
            )
        with no_tf32():
            return self._run(images.to(self.device)).to(torch.float32).reshape(images.shape[0], -1)

    def _probe_feature_dim(self) -> int:
        return int(self(torch.zeros([1, 3, 64, 64], dtype=torch.uint8, device=self.device)).shape[1])

    def describe(self) -> dict:
        return {
            "metric": self.metric,
            "detector": type(self).__name__,
            "source": self.source,
            "sha256": self.sha256,
            "feature_dim": self.feature_dim,
        }
