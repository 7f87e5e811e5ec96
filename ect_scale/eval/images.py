"""Image datasets for reference statistics.

* `ImageDataset`: a folder of images, an EDM-style zip of PNGs, or an `.npz` array, used as stored. Every image
  must have the same resolution (the training resolution; EDM2's references use the whole center-cropped
  training set, no flips).
* `SourceDataset`: an image source of the data package (`ect_scale.data.images`: an ImageNet class tree, a flat
  folder, sklearn-digits), center-cropped to the training resolution exactly as `tools/make_shards.py` does
  (EDM2's `center-crop-dhariwal`), so the reference matches the training data.
Images come out as uint8 [3,H,W]; the detectors resize internally, never here. `rank_loader` splits the images
across ranks exactly as generation splits seeds (`sampling.rank_batches`).
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Optional

import numpy as np
import torch

from ect_scale.eval.sampling import rank_batches

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".tif", ".tiff")


def _decode(blob: bytes, name: str) -> np.ndarray:
    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(blob)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{name}: not a readable image. Fix: remove or re-encode the file") from None


class ImageDataset(torch.utils.data.Dataset):
    """uint8 [3,H,W] images from a directory (recursive), a `.zip`, or an `.npz` ([N,H,W,3] or [N,3,H,W])."""

    def __init__(self, path: str, max_images: Optional[int] = None, seed: int = 0):
        self.path = path
        self._zip: Optional[zipfile.ZipFile] = None
        self._array: Optional[np.ndarray] = None
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"--data: {path} does not exist. Fix: pass a folder of images, a .zip of images "
                "(EDM2 dataset_tool format) or an .npz of uint8 images"
            )
        if path.endswith(".npz"):
            self._array = self._load_npz(path)
            self.names = [f"{path}[{i}]" for i in range(len(self._array))]
        elif path.endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                self.names = sorted(n for n in z.namelist() if n.lower().endswith(IMAGE_EXTENSIONS))
        else:
            self.names = sorted(
                os.path.relpath(os.path.join(root, f), path)
                for root, _, files in os.walk(path)
                for f in files
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        self.order = subset_order(len(self.names), max_images, seed, path)
        self.resolution = tuple(self._read(int(self.order[0])).shape[:2])

    @staticmethod
    def _load_npz(path: str) -> np.ndarray:
        with np.load(path, allow_pickle=False) as data:
            key = "images" if "images" in data else data.files[0]
            arr = data[key]
        if arr.dtype != np.uint8 or arr.ndim != 4 or 3 not in (arr.shape[1], arr.shape[3]):
            raise ValueError(
                f"--data: {path}['{key}'] must be uint8 [N,H,W,3] or [N,3,H,W], got {arr.dtype} {arr.shape}"
            )
        return arr if arr.shape[3] == 3 else arr.transpose(0, 2, 3, 1)

    def __len__(self) -> int:
        return len(self.order)

    def __getstate__(self) -> dict:  # DataLoader workers reopen the zip themselves.
        return {**self.__dict__, "_zip": None}

    def _read(self, i: int) -> np.ndarray:
        if self._array is not None:
            return self._array[i]
        if self.path.endswith(".zip"):
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.path)
            return _decode(self._zip.read(self.names[i]), self.names[i])
        with open(os.path.join(self.path, self.names[i]), "rb") as f:
            return _decode(f.read(), self.names[i])

    def __getitem__(self, idx: int) -> torch.Tensor:
        i = int(self.order[idx])
        img = self._read(i)
        if tuple(img.shape[:2]) != self.resolution:
            raise ValueError(
                f"{self.names[i]}: {img.shape[1]}x{img.shape[0]} differs from the dataset's "
                f"{self.resolution[1]}x{self.resolution[0]}. Fix: resize/crop every image to the training "
                "resolution first (EDM2: dataset_tool.py convert --resolution=512x512)"
            )
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class SourceDataset(torch.utils.data.Dataset):
    """uint8 [3,R,R] images of a data-package image source, center-cropped to `resolution` like the shards."""

    def __init__(
        self,
        spec: str,
        resolution: int,
        max_images: Optional[int] = None,
        seed: int = 0,
        labels_file: Optional[str] = None,
    ):
        from ect_scale.data.images import open_source

        self.source = open_source(spec, labels_file)
        self.order = subset_order(len(self.source), max_images, seed, spec)
        self.resolution = (int(resolution), int(resolution))

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: int) -> torch.Tensor:
        img = self.source.load(int(self.order[idx]), self.resolution[0])  # uint8 [H,W,3].
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def subset_order(num: int, max_images: Optional[int], seed: int, where: str) -> np.ndarray:
    """Indices of every image, or of a fixed random subset of `max_images` (sorted), like EDM2's `max_size`."""
    if num < 2:
        raise ValueError(f"--data: found {num} images in {where}; statistics need at least 2")
    if max_images is None or max_images >= num:
        return np.arange(num)
    return np.sort(np.random.default_rng(seed).choice(num, max_images, replace=False))


def rank_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    rank: int,
    world_size: int,
    num_workers: int = 2,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """This rank's batches (array_split into ceil(N / batch_size) batches, rank takes r::world)."""
    batches = [b.tolist() for b in rank_batches(len(dataset), batch_size, rank, world_size)]
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers > 0 else None,
        persistent_workers=False,
    )


def decoded_shards(url: str, vae_path: Optional[str] = None, device="cpu") -> tuple[torch.Tensor, torch.Tensor, object]:
    """(uint8 RGB images [N,3,H,W], labels [N], manifest) of a whole (small) shard dataset, decoded exactly as
    generated samples are (`encoder.decode(encoder.encode(raw))`): the data side of development metrics."""
    from ect_scale.data.encoders import build_encoder
    from ect_scale.data.readall import read_dataset

    raw, labels, manifest = read_dataset(url)
    encoder = build_encoder(manifest.encoder, vae_path)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.cat(
        [
            encoder.decode(encoder.encode(torch.from_numpy(raw[i : i + 256]).to(device), gen)).cpu()
            for i in range(0, len(raw), 256)
        ]
    )
    return images, torch.from_numpy(labels), manifest


class TensorImages(torch.utils.data.Dataset):
    """uint8 images [N,3,H,W] held in memory (e.g. `decoded_shards`), with a fixed random subset like ImageDataset."""

    def __init__(self, images: torch.Tensor, max_images: Optional[int] = None, seed: int = 0, where: str = "shards"):
        self.images = images
        self.order = subset_order(len(images), max_images, seed, where)
        self.resolution = tuple(images.shape[-2:])

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: int) -> torch.Tensor:
        return self.images[int(self.order[idx])]
