"""Cropped images -> the raw arrays stored in shards: uint8 pixels, or SD-VAE posterior moments.

A converter also describes the encoder the trainer needs (`encoders.build_encoder(manifest["encoder"])`).
Latents are EDM2's: the VAE sees images in [0, 1] and the shard stores the posterior mean and std
(`LatentEncoder.encode_pixels`, as NVlabs/edm2 dataset_tool.py encode), so training draws a fresh z = mean + std * eps
each time.
float16 storage halves the size (64 KiB per ImageNet-512 sample); its relative rounding error (< 5e-4) is
small next to the posterior std and the normalisation by raw_std ~ 4 (NVlabs/edm2 training/encoders.py).
"""

from __future__ import annotations

import abc

import numpy as np
import torch

from ect_scale.data.encoders import LatentEncoder, PixelEncoder


class RawConverter(abc.ABC):
    """Interface: `describe()`, `raw_spec(resolution) -> (shape, dtype)`, `convert(uint8 [N,H,W,3]) -> [N,...]`."""

    @abc.abstractmethod
    def describe(self) -> dict: ...

    @abc.abstractmethod
    def raw_spec(self, resolution: int) -> tuple[list[int], str]: ...

    @abc.abstractmethod
    def convert(self, images: np.ndarray) -> np.ndarray: ...


class PixelConverter(RawConverter):
    """uint8 RGB [N,H,W,3] -> uint8 [N,3,H,W] (pixel-space models, e.g. ImageNet-64), or with `grayscale` the
    luma [N,1,H,W] (ITU-R 601 weights, as PIL's convert('L'); the quickstart's digits)."""

    channels = 3

    def __init__(self, grayscale: bool = False):
        self.channels = 1 if grayscale else 3

    def describe(self) -> dict:
        return PixelEncoder(self.channels).describe()

    def raw_spec(self, resolution: int) -> tuple[list[int], str]:
        return [self.channels, resolution, resolution], "uint8"

    def convert(self, images: np.ndarray) -> np.ndarray:
        if self.channels == 1:
            luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            return np.ascontiguousarray(np.round(luma).clip(0, 255).astype(np.uint8)[:, None])
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


class VaeConverter(RawConverter):
    """uint8 RGB -> SD-VAE posterior (mean, std) [N, 2*latent_channels, H/f, W/f] on `device`, stored as `dtype`."""

    def __init__(self, vae: str, device: str | torch.device = "cpu", dtype: str = "float16"):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"--dtype {dtype}: must be float16 or float32")
        self.encoder = LatentEncoder(vae=vae)
        self.device, self.dtype = torch.device(device), dtype
        config = self.encoder.vae().config  # Loads the VAE now, so a bad --vae fails before any work.
        self.factor = 2 ** (len(config.block_out_channels) - 1)
        self.channels = 2 * config.latent_channels
        if self.channels != LatentEncoder.raw_channels:
            raise ValueError(
                f"--vae {vae}: has {config.latent_channels} latent channels; the latent normalisation "
                f"(NVlabs/edm2 training/encoders.py) needs {LatentEncoder.raw_channels // 2}. Fix: use an SD-VAE "
                "(stabilityai/sd-vae-ft-mse)"
            )

    def describe(self) -> dict:
        return self.encoder.describe()

    def raw_spec(self, resolution: int) -> tuple[list[int], str]:
        if resolution % self.factor:
            raise ValueError(
                f"--resolution {resolution}: must be a multiple of the VAE's downsampling factor "
                f"{self.factor}. Fix: use e.g. 256 or 512"
            )
        return [self.channels, resolution // self.factor, resolution // self.factor], self.dtype

    @torch.no_grad()
    def convert(self, images: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device)
        moments = self.encoder.encode_pixels(
            pixels
        )  # [N,8,h,w] float32: mean and std (NVlabs/edm2 training/encoders.py).
        out = moments.to(getattr(torch, self.dtype)).cpu()
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"the VAE produced non-finite moments in {self.dtype}. Fix: use --dtype float32")
        return out.numpy()
