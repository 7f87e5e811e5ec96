"""A development metric for small datasets, offline: a small classifier trained on the training shards, the
Fréchet distance in its penultimate features (`fd_classifier`) and the accuracy of class-conditional samples.

This is not FID. The features are this classifier's, trained on the same data, so the numbers only compare models
of one dataset with one classifier file (its sha256 is recorded with every result). It needs no download, which
is what the quickstart and quick experiments on small data sets need; report FID (Inception) for anything else.

    clf = train_classifier(images_uint8, labels)        # [N,3,H,W] uint8 RGB (decoded shards), labels [N]
    save_classifier("clf.safetensors", clf, meta)
    det = ClassifierDetector("clf.safetensors", device) # a `Detector`: uint8 RGB -> features [N, feature_dim]
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import torch

from ect_scale.eval.detector_base import Detector, DetectorFileError

FORMAT = "ect_scale-classifier/1"


class SmallClassifier(torch.nn.Module):
    """conv3x3(w) - SiLU - conv3x3(2w) - SiLU - 2x2 average pool - conv3x3(2w) - SiLU - global average pool -
    linear(feature_dim) - SiLU = features; linear(num_classes) = logits. Input: uint8 RGB images."""

    def __init__(self, num_classes: int, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.config = {"num_classes": num_classes, "width": width, "feature_dim": feature_dim}
        w = width
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, w, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(w, 2 * w, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.AvgPool2d(2, ceil_mode=True),
            torch.nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(8 * w, feature_dim),
            torch.nn.SiLU(),
        )
        self.head = torch.nn.Linear(feature_dim, num_classes)

    def forward(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, feature_dim], logits [N, num_classes]) of uint8 RGB images [N,3,H,W]."""
        features = self.body(images_uint8.to(torch.float32) / 127.5 - 1)
        return features, self.head(features)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 15,
    batch: int = 64,
    lr: float = 2e-3,
    holdout: float = 0.1,
    seed: int = 0,
    log=print,
) -> tuple[SmallClassifier, dict]:
    """Train on all but a `holdout` fraction (a fixed random split), report that fraction's accuracy, then return
    the classifier (Adam, cross-entropy, a little input noise against over-fitting to exact pixel values)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)
    n_hold = int(round(len(images) * holdout))
    held, train = order[:n_hold], order[n_hold:]
    torch.manual_seed(seed)
    model = SmallClassifier(int(labels.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * ((len(train) + batch - 1) // batch))
    x_all = images.to(torch.float32)
    for _epoch in range(epochs):
        model.train()
        perm = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            x = (x_all[idx] + 4.0 * torch.randn(x_all[idx].shape, generator=gen)).clamp(0, 255)
            loss = torch.nn.functional.cross_entropy(model(x)[1], labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        acc = float((model(images[held])[1].argmax(1) == labels[held]).float().mean()) if n_hold else float("nan")
    log(f"[classifier] {epochs} epochs on {len(train)} images; held-out accuracy {acc:.3f} on {n_hold} images")
    return model, {"heldout_accuracy": acc, "heldout_images": n_hold, "train_images": len(train), "epochs": epochs}


def save_classifier(path: str, model: SmallClassifier, meta: Optional[dict] = None) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(
        tensors, path, metadata={"format": FORMAT, "config": json.dumps(model.config), "meta": json.dumps(meta or {})}
    )


def load_classifier(path: str, device="cpu") -> tuple[SmallClassifier, dict]:
    """(classifier in eval mode, meta) from a file written by `save_classifier` / `tools/train_classifier.py`."""
    from safetensors import safe_open

    if not path or not os.path.isfile(path):
        raise DetectorFileError(
            f"classifier file not found: {path or '(not set)'}. Fix: train one on your training "
            "shards with tools/train_classifier.py --data MANIFEST --out FILE"
        )
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise DetectorFileError(
                f"{path}: not a classifier file of tools/train_classifier.py "
                f"(format {meta.get('format')!r}). Fix: pass the file that tool wrote"
            )
        state = {k: f.get_tensor(k) for k in f.keys()}
    model = SmallClassifier(**json.loads(meta["config"]))
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False), json.loads(meta.get("meta", "{}"))


class ClassifierDetector(Detector):
    """Penultimate features of a `SmallClassifier` (metric `fd_classifier`), plus its class predictions."""

    metric = "fd_classifier"

    def __init__(self, path: Optional[str], device="cpu"):
        model, self.meta = load_classifier(path, "cpu")
        super().__init__(model, device, path)

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[0]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted class indices of uint8 RGB images [N,3,H,W]."""
        return self.model(images.to(self.device))[1].argmax(1)


class SampleAccuracy:
    """Accuracy of class-conditional samples under a classifier: the fraction whose predicted class is the class
    they were generated for (replayed from each seed's generator). Pass it as `generated_stats(on_images=...)`;
    `result()` sums over ranks (collective)."""

    def __init__(self, detector: ClassifierDetector, net):
        self.detector, self.net = detector, net
        self.correct: dict[str, int] = {}
        self.total: dict[str, int] = {}

    def __call__(self, name: str, seeds: np.ndarray, images: torch.Tensor) -> None:
        from ect_scale.ect import SeedGenerators, draw_labels, draw_latents

        rng = SeedGenerators([int(s) for s in seeds], images.device)
        draw_latents(rng, self.net)  # The samplers draw each seed's noise first, then its label.
        wanted = draw_labels(rng, self.net.label_dim).argmax(1).to(self.detector.device)
        hit = int((self.detector.predict(images) == wanted).sum())
        self.correct[name] = self.correct.get(name, 0) + hit
        self.total[name] = self.total.get(name, 0) + len(seeds)

    def result(self) -> dict[str, float]:
        from ect_scale.runtime import dist

        names = sorted(self.total)
        counts = dist.all_reduce_(
            torch.tensor(
                [[self.correct[n], self.total[n]] for n in names], dtype=torch.float64, device=self.detector.device
            )
        )
        return {n: float(c / t) for n, (c, t) in zip(names, counts.tolist())}
