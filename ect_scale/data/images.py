"""Image sources for shard writing, and EDM2's ImageNet center crop.

Sources list their images deterministically (sorted), give a label per image and load one image as uint8
RGB [H,W,3] at the target resolution. An image that cannot be decoded raises `UnreadableImage`; the writer
skips, counts and lists it.

  * `ImageTreeSource`: ImageNet layout `root/<class>/**/*.JPEG`; class indices from the sorted folder names.
  * `FlatFolderSource`: images in one folder plus an optional labels file (EDM2 `dataset.json`, or text lines
    `<file> <label>` with integer labels or class names).
  * `DigitsSource`: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes; ships with scikit-learn),
    upscaled to the target resolution as RGB. For the quickstart and tests: no download.
  * `ArraySource`: images already in memory (tests, benchmarks).
"""

from __future__ import annotations

import abc
import json
import os
from typing import Optional, Sequence

import numpy as np
import PIL.Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


class UnreadableImage(Exception):
    """An image could not be read or decoded (the writer skips it and lists it in the manifest)."""


def center_crop_imagenet(image: PIL.Image.Image, resolution: int) -> np.ndarray:
    """ADM's center crop (Dhariwal & Nichol 2021), EDM2's `--transform=center-crop-dhariwal` (NVlabs/edm2
    dataset_tool.py, center_crop_imagenet).

    Halve with BOX filtering while the short side is >= 2x the target, scale the short side to `resolution`
    with BICUBIC, then take the central `resolution` x `resolution` window. Returns uint8 [H,W,C].
    """
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(s // 2 for s in image.size), resample=PIL.Image.Resampling.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=PIL.Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return arr[top : top + resolution, left : left + resolution]


def load_image_file(path: str, resolution: int) -> np.ndarray:
    """Decode `path` as RGB and center-crop it; any decoding problem raises `UnreadableImage`."""
    try:
        with PIL.Image.open(path) as img:
            rgb = img.convert("RGB")  # Also handles ImageNet's CMYK and grayscale JPEGs.
        return center_crop_imagenet(rgb, resolution)
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as e:
        raise UnreadableImage(f"{type(e).__name__}: {e}") from None


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class ImageSource(abc.ABC):
    """Base class: `names[i]` (relative path), `labels[i]`, `load(i, resolution)`."""

    kind = "abstract"

    def __init__(self, names: list[str], labels: list[int], class_names: list[str]):
        self.names, self.labels, self.class_names = names, labels, class_names

    def __len__(self) -> int:
        return len(self.names)

    @property
    def label_dim(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def load(self, index: int, resolution: int) -> np.ndarray: ...

    def describe(self) -> dict:
        return {"kind": self.kind, "num_images": len(self), "num_classes": self.label_dim}


class ImageTreeSource(ImageSource):
    """`root/<class>/**/<image>`; classes are the sorted subfolder names (ImageNet synsets -> 0..999)."""

    kind = "image-tree"

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not classes:
            raise ValueError(
                f"--source {root}: no class subfolders found. Fix: pass the folder whose subfolders are "
                "the classes (ImageNet: .../train), or a flat folder with --labels"
            )
        names, labels = [], []
        for label, cls in enumerate(classes):
            for dirpath, dirnames, filenames in os.walk(os.path.join(self.root, cls)):
                dirnames.sort()
                rel = os.path.relpath(dirpath, self.root)
                found = sorted(f for f in filenames if _is_image(f))
                names += [os.path.join(rel, f) for f in found]
                labels += [label] * len(found)
        super().__init__(names, labels, classes)

    def load(self, index: int, resolution: int) -> np.ndarray:
        return load_image_file(os.path.join(self.root, self.names[index]), resolution)

    def describe(self) -> dict:
        return {**super().describe(), "path": self.root}


class FlatFolderSource(ImageSource):
    """Images in one folder; labels from `labels_file` (then only the files it lists), else unconditional."""

    kind = "flat-folder"

    def __init__(self, root: str, labels_file: Optional[str] = None):
        self.root, self.labels_file = os.path.abspath(root), labels_file
        if labels_file is None:
            names = sorted(f for f in os.listdir(self.root) if _is_image(f))
            super().__init__(names, [0] * len(names), [])
            return
        pairs = read_labels_file(labels_file)
        raw = [label for _, label in pairs]
        if all(isinstance(v, int) for v in raw):
            labels = [int(v) for v in raw]
            class_names = [str(i) for i in range(max(labels) + 1)] if labels else []
        else:
            class_names = sorted({str(v) for v in raw})
            index = {c: i for i, c in enumerate(class_names)}
            labels = [index[str(v)] for v in raw]
        super().__init__([name for name, _ in pairs], labels, class_names)

    def load(self, index: int, resolution: int) -> np.ndarray:
        return load_image_file(os.path.join(self.root, self.names[index]), resolution)

    def describe(self) -> dict:
        return {**super().describe(), "path": self.root, "labels_file": self.labels_file}


def read_labels_file(path: str) -> list[tuple[str, int | str]]:
    """(file name, label) pairs sorted by name from EDM2's `dataset.json` or `<file> <label>` text lines."""
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
        entries = data.get("labels", data) if isinstance(data, dict) else data
        pairs = list(entries.items()) if isinstance(entries, dict) else [tuple(e) for e in entries or []]
    else:
        pairs = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.replace(",", " ").replace("\t", " ").split()
            if len(parts) != 2:
                raise ValueError(
                    f"--labels {path}:{lineno}: expected '<file> <label>', got {line!r}. Fix: one image "
                    "per line, file name and label separated by a space, tab or comma"
                )
            pairs.append((parts[0], parts[1]))
    if not pairs:
        raise ValueError(f"--labels {path}: no labels found. Fix: use EDM2's dataset.json or '<file> <label>' lines")
    return sorted((str(n), int(v) if str(v).lstrip("-").isdigit() else str(v)) for n, v in pairs)


class ArraySource(ImageSource):
    """In-memory uint8 images [N,h,w,3] (or [N,h,w] grayscale), resized with the same center crop."""

    kind = "arrays"

    def __init__(
        self, images: np.ndarray, labels: Sequence[int], class_names: Optional[list[str]] = None, prefix: str = "array"
    ):
        self.images = np.asarray(images, dtype=np.uint8)
        label_list = [int(v) for v in labels]
        names = [f"{prefix}/{i:06d}" for i in range(len(self.images))]
        if class_names is None:
            class_names = [str(i) for i in range(max(label_list) + 1)] if label_list else []
        super().__init__(names, label_list, class_names)

    def load(self, index: int, resolution: int) -> np.ndarray:
        img = PIL.Image.fromarray(self.images[index]).convert("RGB")
        return center_crop_imagenet(img, resolution)


class DigitsSource(ArraySource):
    """scikit-learn's 8x8 digits (values 0..16) as uint8 RGB, bicubically upscaled to the target resolution."""

    kind = "sklearn-digits"

    def __init__(self):
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise RuntimeError("--source sklearn-digits needs scikit-learn: pip install 'ect_scale[demo]'") from None
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        super().__init__(images, digits.target.tolist(), [str(i) for i in range(10)], prefix="digits")


def open_source(spec: str, labels_file: Optional[str] = None) -> ImageSource:
    """`sklearn-digits`, a class-folder tree, or a flat folder (with `labels_file`)."""
    if spec == "sklearn-digits":
        return DigitsSource()
    if not os.path.isdir(spec):
        raise ValueError(
            f"--source {spec}: not a folder. Fix: pass an ImageNet-style folder (train/<class>/...), a "
            "flat folder with --labels, or 'sklearn-digits'"
        )
    if labels_file is not None:
        return FlatFolderSource(spec, labels_file)
    has_dirs = any(e.is_dir() for e in os.scandir(spec))
    return ImageTreeSource(spec) if has_dirs else FlatFolderSource(spec)
