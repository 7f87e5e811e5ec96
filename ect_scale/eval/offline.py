"""Offline comparison of samplers with the development metric (`eval/classifier.py`): one row per (network,
sampler), each scored by the Fréchet distance of `num` samples to a reference half of the training data in the
classifier's features, and by the classifier's accuracy on the class-conditional samples. A row of real images
(the other half of the data, same count) gives the noise floor of the protocol. Used by tools/quickstart_report.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ect_scale.eval.classifier import ClassifierDetector, SampleAccuracy
from ect_scale.eval.pipeline import generated_stats
from ect_scale.eval.sampling import SamplerSpec
from ect_scale.eval.stats import FeatureStats, GaussianStats, fd_between


@dataclass
class Row:
    name: str  # e.g. "teacher, Heun 32 steps"
    net: Optional[torch.nn.Module]  # None for the real-data row.
    spec: Optional[SamplerSpec]
    fd: float = float("nan")
    accuracy: float = float("nan")

    @property
    def nfe(self) -> Optional[int]:
        return self.spec.nfe if self.spec is not None else None


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random split of n items into a reference half A and a comparison half B."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def image_stats(detector: ClassifierDetector, images: torch.Tensor, batch: int = 256) -> GaussianStats:
    acc = FeatureStats(detector.feature_dim, detector.device)
    for i in range(0, len(images), batch):
        acc.update(detector(images[i : i + batch]))
    return acc.gaussian()


def real_row(detector: ClassifierDetector, images: torch.Tensor, labels: torch.Tensor, ref: GaussianStats) -> Row:
    """The noise floor: real images (not in the reference half) against the reference half."""
    preds = torch.cat([detector.predict(images[i : i + 256]).cpu() for i in range(0, len(images), 256)])
    return Row(
        "real data (other half)",
        None,
        None,
        fd_between(image_stats(detector, images), ref),
        float((preds == labels).float().mean()),
    )


def score_rows(
    rows: list[Row], encoder, detector: ClassifierDetector, ref: GaussianStats, num: int, device, batch: int = 250
) -> list[Row]:
    """Fill each generated row's FD (seeds 0..num-1, the same seeds for every row) and accuracy."""
    seeds = np.arange(num, dtype=np.int64)
    for row in rows:
        if row.net is None:
            continue
        accuracy = SampleAccuracy(detector, row.net)
        stats = generated_stats(
            row.net,
            encoder,
            {"fd_classifier": detector},
            seeds,
            [row.spec],
            batch,
            device,
            progress="none",
            on_images=accuracy,
        )
        row.fd = fd_between(stats[row.spec.name]["fd_classifier"], ref)
        row.accuracy = accuracy.result()[row.spec.name]
    return rows


def format_rows(rows: list[Row], baseline: Optional[Row] = None) -> str:
    """A fixed-width table; `baseline` (the teacher's many-step row) adds an 'x baseline' column."""
    head = f"{'samples':<34} {'NFE':>4} {'FD_classifier':>14} {'x teacher-32':>13} {'class accuracy':>15}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r.fd / baseline.fd:>13.2f}" if baseline is not None and baseline.fd > 0 else f"{'':>13}"
        nfe = f"{r.nfe:>4d}" if r.nfe is not None else f"{'-':>4}"
        lines.append(f"{r.name:<34} {nfe} {r.fd:>14.3f} {ratio} {r.accuracy:>15.3f}")
    return "\n".join(lines)


def to_json(rows: list[Row], baseline: Optional[Row] = None) -> list[dict]:
    return [
        {
            "name": r.name,
            "nfe": r.nfe,
            "sampler": r.spec.describe() if r.spec else None,
            "fd_classifier": r.fd,
            "ratio_to_teacher_32": (r.fd / baseline.fd) if baseline is not None and baseline.fd > 0 else None,
            "class_accuracy": r.accuracy,
        }
        for r in rows
    ]
