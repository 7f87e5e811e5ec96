"""Raw stored data <-> the network's normalised space, as EDM2 defines it (NVlabs/edm2
training/encoders.py, dataset_tool.py encode).

Stored ("raw") data are uint8 RGB pixels [N,3,H,W] or SD-VAE posterior moments [N,8,h,w] (4 mean + 4 std).
  * `PixelEncoder`: x0 = pixels / 127.5 - 1;   decode: (x0 * 127.5 + 128).clip(0, 255) -> uint8.
  * `LatentEncoder`: z = mean + std * eps (a fresh draw every time a sample is seen), then per channel
    x0 = z * scale + bias with scale = final_std / raw_std, bias = final_mean - raw_mean * scale;
    decode: z = (x0 - bias) / scale -> VAE decoder -> clamp(0, 1) * 255 -> uint8.
The VAE sees images in [0, 1] (EDM2's convention, NVlabs/edm2#9), which is what the constants assume.
`encode` runs on the device of its input, so latent sampling and normalisation happen on the GPU.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

# EDM2's ImageNet-512 statistics of SD-VAE (ft-mse) latents of [0,1] images (NVlabs/edm2
# training/encoders.py, StabilityVAEEncoder).
EDM2_RAW_MEAN = (5.81, 3.25, 0.12, -2.15)
EDM2_RAW_STD = (4.17, 4.62, 3.71, 3.28)
SD_VAE_ID = "stabilityai/sd-vae-ft-mse"
VAE_DOWNSAMPLE = 8  # SD-VAE: image resolution / latent resolution.


class PixelEncoder:
    """uint8 RGB (or grayscale) <-> [-1, 1] (EDM2's StandardRGBEncoder semantics). `decode` always returns RGB:
    grayscale images are repeated over 3 channels, the format detectors and sample grids take."""

    kind = "pixels"

    def __init__(self, channels: int = 3):
        if channels not in (1, 3):
            raise ValueError(f"pixel data must have 1 (grayscale) or 3 (RGB) channels, got {channels}")
        self.raw_channels = channels

    def encode(self, raw: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return raw.to(torch.float32) / 127.5 - 1

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        out = (x0.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)
        return out.expand(-1, 3, -1, -1).contiguous() if out.shape[1] == 1 else out

    def describe(self) -> dict:
        return {"kind": self.kind} if self.raw_channels == 3 else {"kind": self.kind, "channels": 1}


class LatentEncoder:
    """SD-VAE posterior moments -> normalised latents, and back to pixels through the VAE decoder."""

    kind = "sd-vae"
    raw_channels = 8

    def __init__(
        self,
        vae: str = SD_VAE_ID,
        raw_mean: Sequence[float] = EDM2_RAW_MEAN,
        raw_std: Sequence[float] = EDM2_RAW_STD,
        final_mean: float = 0.0,
        final_std: float = 0.5,
        decode_batch: int = 8,
    ):
        self.vae_name = vae
        self.raw_mean, self.raw_std = list(raw_mean), list(raw_std)
        self.final_mean, self.final_std = float(final_mean), float(final_std)
        self.scale = torch.tensor([final_std / s for s in raw_std], dtype=torch.float32)
        self.bias = torch.tensor(
            [final_mean - m * final_std / s for m, s in zip(raw_mean, raw_std)], dtype=torch.float32
        )
        self.decode_batch = decode_batch
        self._vae = None

    def encode(self, raw: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        mean, std = raw.to(torch.float32).chunk(2, dim=1)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        z = mean + eps * std
        return z * self.scale.to(z.device).view(1, -1, 1, 1) + self.bias.to(z.device).view(1, -1, 1, 1)

    def vae(self, device=None):
        """The diffusers AutoencoderKL, loaded lazily from a local directory (or a hub id if online)."""
        if self._vae is None:
            self._vae = load_vae(self.vae_name)
        return self._vae.to(device) if device is not None else self._vae

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.vae(x0.device)
        z = (x0.to(torch.float32) - self.bias.to(x0.device).view(1, -1, 1, 1)) / self.scale.to(x0.device).view(
            1, -1, 1, 1
        )
        imgs = torch.cat([vae.decode(b).sample for b in z.split(self.decode_batch)])
        return imgs.clamp(0, 1).mul(255).to(torch.uint8)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 RGB [N,3,H,W] -> raw moments [N,8,H/8,W/8] (posterior mean and std), as stored in shards."""
        vae = self.vae(pixels.device)
        dist = vae.encode(pixels.to(torch.float32) / 255).latent_dist
        return torch.cat([dist.mean, dist.std], dim=1)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "vae": self.vae_name,
            "raw_mean": self.raw_mean,
            "raw_std": self.raw_std,
            "final_mean": self.final_mean,
            "final_std": self.final_std,
        }


def load_vae(name_or_path: str):
    """Load an `AutoencoderKL` from a local directory, or from the hub cache / network when given a hub id.

    Clusters are often offline: a missing local directory gives an error naming what to download.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise RuntimeError("the SD-VAE needs diffusers: pip install 'ect_scale[vae]'") from None
    if os.path.isdir(name_or_path):
        return AutoencoderKL.from_pretrained(name_or_path).eval().requires_grad_(False)
    if os.path.sep in name_or_path and not os.path.exists(name_or_path):
        raise FileNotFoundError(
            f"VAE directory not found: {name_or_path}. Fix: download '{SD_VAE_ID}' with "
            f"`huggingface-cli download {SD_VAE_ID} --local-dir {name_or_path}` on a machine with "
            "network access and copy it here"
        )
    try:
        return AutoencoderKL.from_pretrained(name_or_path).eval().requires_grad_(False)
    except Exception as e:  # Offline or unknown id.
        raise RuntimeError(
            f"could not load VAE '{name_or_path}' ({type(e).__name__}: {e}). Fix: pass a local "
            f"directory holding '{SD_VAE_ID}' (config.json + diffusion_pytorch_model.safetensors)"
        ) from None


def build_encoder(description: dict, vae_path: Optional[str] = None):
    """Encoder from a shard manifest's `encoder` entry; `vae_path` overrides where the VAE is loaded from."""
    kind = description.get("kind", "pixels")
    if kind == "pixels":
        return PixelEncoder(int(description.get("channels", 3)))
    if kind == "sd-vae":
        return LatentEncoder(
            vae=vae_path or description.get("vae", SD_VAE_ID),
            raw_mean=description.get("raw_mean", EDM2_RAW_MEAN),
            raw_std=description.get("raw_std", EDM2_RAW_STD),
            final_mean=description.get("final_mean", 0.0),
            final_std=description.get("final_std", 0.5),
        )
    raise ValueError(f"unknown encoder kind {kind!r} in the shard manifest (expected 'pixels' or 'sd-vae')")
