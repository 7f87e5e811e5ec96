"""Evaluation configuration: in-loop FID of each EMA and the weights the detectors load (local files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ect_scale.config.base import check


@dataclass
class EvalConfig:
    interval_nimg: int = 0                # In-loop evaluation every this many images; 0 = off.
    num_samples: int = 10_000             # Samples per in-loop FID (the standalone evaluator defaults to 50k).
    steps: list[int] = field(default_factory=lambda: [1, 2])  # Sampler step counts to evaluate.
    batch_gpu: int = 64                   # Samples per GPU per batch.
    ref_stats: Optional[str] = None       # Reference statistics (EDM2 img512.pkl / img64.pkl format or ours).
    inception_path: Optional[str] = None  # NVIDIA TorchScript inception-2015-12-05 weights (local file).
    dinov2_path: Optional[str] = None     # DINOv2 ViT-L/14 weights (local file); null = skip FD_DINOv2.
    vae_path: Optional[str] = None        # SD-VAE (diffusers AutoencoderKL) directory for decoding latents.
    grid_size: int = 8                    # Sample grid side length written to TensorBoard.

    def validate(self, path: str = "eval") -> None:
        p = path or "eval"
        check(self.interval_nimg >= 0, f"{p}.interval_nimg", "must be >= 0", "use 0 to disable in-loop evaluation")
        check(self.num_samples > 1, f"{p}.num_samples", "must be > 1", "use e.g. 10000 in-loop, 50000 for reporting")
        check(all(s >= 1 for s in self.steps), f"{p}.steps", "step counts must be >= 1", "use [1, 2]")
        check(self.batch_gpu >= 1, f"{p}.batch_gpu", "must be >= 1", "use e.g. 64")
