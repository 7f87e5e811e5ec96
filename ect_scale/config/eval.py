"""Evaluation configuration: in-loop FID / FD_DINOv2 of each EMA and the local files the detectors load.

Clusters are often offline, so every detector, the VAE and the reference statistics are local files (or fsspec
URLs for the reference). See docs/evaluation.md for where each file comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ect_scale.config.base import check, parse_nimg


@dataclass
class EvalConfig:
    interval_nimg: int = 0  # In-loop evaluation every this many images; 0 = off.
    # ... and when training reaches each of these image counts (e.g. a scaling sweep's log-spaced budgets).
    at_nimg: list[int] = field(default_factory=list)
    num_samples: int = 10_000  # Samples per in-loop FID (report 50k with launchers/evaluate.py).
    steps: list[int] = field(default_factory=lambda: [1, 2])  # Sampler step counts; n steps use ect.t_mid[:n-1].
    metrics: list[Literal["fid", "fd_dinov2", "fd_classifier"]] = field(
        default_factory=lambda: ["fid"]
    )  # fd_classifier = offline development metric.
    batch_gpu: int = 64  # Samples per GPU per batch.
    seed: int = 0  # First seed: seeds are seed .. seed + num_samples - 1, fixed across evals.
    ref_stats: Optional[str] = None  # Reference statistics: EDM2 img512.pkl / img64.pkl, or tools/fid_ref.py's.
    inception_path: Optional[str] = None  # NVIDIA TorchScript inception-2015-12-05.pt (local file).
    dinov2_repo: Optional[str] = None  # Local clone of github.com/facebookresearch/dinov2 (torch.hub entry points).
    dinov2_path: Optional[str] = None  # dinov2_vitl14_pretrain.pth (local file).
    classifier_path: Optional[str] = None  # fd_classifier: tools/train_classifier.py's file (small datasets; not FID).
    vae_path: Optional[str] = None  # SD-VAE directory (diffusers AutoencoderKL, sd-vae-ft-mse) to decode latents.
    grid_size: int = 8  # Sample grid side length written to TensorBoard; 0 = no grids.

    @classmethod
    def _preprocess(cls, raw: dict, path: str = "eval") -> dict:
        """`at_nimg` entries accept image counts with suffixes (`2k`, `12.8M`), like every `*_nimg` option."""
        at = raw.get("at_nimg")
        if isinstance(at, (list, tuple)):
            p = path or "eval"
            raw = dict(raw, at_nimg=[parse_nimg(v, f"{p}.at_nimg[{i}]") for i, v in enumerate(at)])
        return raw

    @property
    def enabled(self) -> bool:
        """Whether the run evaluates in the loop at all (`interval_nimg` or `at_nimg`)."""
        return self.interval_nimg > 0 or bool(self.at_nimg)

    def validate(self, path: str = "eval") -> None:
        p = path or "eval"
        check(self.interval_nimg >= 0, f"{p}.interval_nimg", "must be >= 0", "use 0 to disable in-loop evaluation")
        check(
            all(n > 0 for n in self.at_nimg) and len(set(self.at_nimg)) == len(self.at_nimg),
            f"{p}.at_nimg",
            f"must list distinct image counts > 0 (got {self.at_nimg})",
            "list when to evaluate, e.g. [2k, 4k, 8k], or [] for none",
        )
        check(self.num_samples > 1, f"{p}.num_samples", "must be > 1", "use e.g. 10000 in-loop, 50000 for reporting")
        check(
            len(self.steps) > 0 and all(s >= 1 for s in self.steps),
            f"{p}.steps",
            "step counts must be >= 1",
            "use [1, 2]",
        )
        check(len(set(self.steps)) == len(self.steps), f"{p}.steps", "step counts must be distinct", "use [1, 2]")
        check(
            len(self.metrics) > 0 and len(set(self.metrics)) == len(self.metrics),
            f"{p}.metrics",
            "must list distinct metrics",
            "use [fid], [fid, fd_dinov2] or, for small datasets, [fd_classifier]",
        )
        check(self.batch_gpu >= 1, f"{p}.batch_gpu", "must be >= 1", "use e.g. 64")
        check(self.seed >= 0, f"{p}.seed", "must be >= 0", "use 0")
        check(self.grid_size >= 0, f"{p}.grid_size", "must be >= 0", "use 8, or 0 for no sample grids")
        if self.enabled:
            self.validate_files(p)

    def validate_files(self, p: str = "eval") -> None:
        """In-loop evaluation needs every file named; the error says which option is missing."""
        check(
            self.ref_stats is not None,
            f"{p}.ref_stats",
            "is required for in-loop evaluation",
            "download EDM2's img512.pkl/img64.pkl (docs/evaluation.md) or run tools/fid_ref.py, and set its path",
        )
        if "fid" in self.metrics:
            check(
                self.inception_path is not None,
                f"{p}.inception_path",
                "is required for metric 'fid'",
                "download inception-2015-12-05.pt (docs/evaluation.md) and set its path",
            )
        if "fd_classifier" in self.metrics:
            check(
                self.classifier_path is not None,
                f"{p}.classifier_path",
                "is required for metric 'fd_classifier'",
                "train one on the training shards with tools/train_classifier.py and set its path",
            )
        if "fd_dinov2" in self.metrics:
            check(
                self.dinov2_repo is not None and self.dinov2_path is not None,
                f"{p}.dinov2_repo/{p}.dinov2_path",
                "are required for metric 'fd_dinov2'",
                "clone facebookresearch/dinov2 and download dinov2_vitl14_pretrain.pth (docs/evaluation.md)",
            )
