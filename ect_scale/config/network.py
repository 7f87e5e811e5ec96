"""Network configuration: an EDM2 preset plus per-run overrides (dropout, precision, attention kernel)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ect_scale.config.base import check
from ect_scale.config.presets import PRESETS


@dataclass
class NetworkConfig:
    preset: Optional[str] = (
        None  # Named architecture (edm2-img512-s, edm2-img64-xl, tiny-latent, ...); fields below override it.
    )
    img_resolution: int = 64  # Spatial size of the network input (latent or pixel resolution).
    img_channels: int = 4  # Input channels: 4 for SD-VAE latents, 3 for RGB pixels.
    label_dim: int = 1000  # Number of classes; 0 = unconditional.
    model_channels: int = 192  # Base channel count (EDM2 "channels").
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # Per-level channel multipliers.
    channel_mult_noise: Optional[int] = None  # Noise-embedding width multiplier; None = channel_mult[0].
    channel_mult_emb: Optional[int] = None  # Embedding width multiplier; None = max(channel_mult).
    num_blocks: int = 3  # Residual blocks per level (decoder gets one more).
    attn_resolutions: list[int] = field(default_factory=lambda: [16, 8])  # Resolutions with self-attention.
    channels_per_head: int = 64  # Attention head width.
    dropout: float = 0.0  # Dropout probability in the residual branch.
    dropout_res: Optional[int] = None  # Apply dropout only at feature resolutions <= this (ECT: 16); None = everywhere.
    res_balance: float = 0.3  # mp_sum balance, main (0) vs residual branch (1).
    attn_balance: float = 0.3  # mp_sum balance, main (0) vs attention (1).
    label_balance: float = 0.5  # mp_sum balance, noise (0) vs class embedding (1).
    concat_balance: float = 0.5  # mp_cat balance, skip (0) vs main path (1).
    clip_act: Optional[float] = 256.0  # Activation clamp after each block; None = off.
    sigma_data: float = 0.5  # Data standard deviation assumed by the preconditioning.
    logvar_channels: int = 128  # Width of the learned log-variance head's Fourier features; 0 = no head.
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # Dtype of the U-Net main path.
    attention: Literal["einsum", "sdpa"] = "einsum"  # einsum = EDM2's reference; sdpa = fused kernel (see tests).

    @classmethod
    def _preprocess(cls, raw: dict, path: str) -> dict:
        name = raw.get("preset")
        if name is None:
            return raw
        option = f"{path}.preset" if path else "preset"
        check(name in PRESETS, option, f"unknown preset {name!r}", f"use one of {', '.join(sorted(PRESETS))}")
        return {**PRESETS[name], **raw}

    def validate(self, path: str = "network") -> None:
        p = path or "network"
        check(
            self.img_resolution >= 4 and self.img_resolution & (self.img_resolution - 1) == 0,
            f"{p}.img_resolution",
            f"must be a power of two >= 4 (got {self.img_resolution})",
            "use 64 for EDM2 presets",
        )
        check(
            self.img_resolution >> (len(self.channel_mult) - 1) >= 1,
            f"{p}.channel_mult",
            f"{len(self.channel_mult)} levels downsample {self.img_resolution}px below 1px",
            "use fewer levels",
        )
        check(self.model_channels > 0, f"{p}.model_channels", "must be positive", "use e.g. 192")
        check(0.0 <= self.dropout < 1.0, f"{p}.dropout", f"must be in [0, 1) (got {self.dropout})", "ECT uses 0.4-0.5")
        check(self.label_dim >= 0, f"{p}.label_dim", "must be >= 0", "use 0 for unconditional models")
        for lvl, m in enumerate(self.channel_mult):
            for res in self.attn_resolutions:
                if res == self.img_resolution >> lvl:
                    c = self.model_channels * m
                    check(
                        c % self.channels_per_head == 0,
                        f"{p}.channels_per_head",
                        f"{c} channels at {res}px are not divisible by {self.channels_per_head}",
                        "choose channels_per_head dividing every attention level's width",
                    )
        # The bottom level always has attention in its first decoder block (EDM2 `in0`).
        c_bottom = self.model_channels * self.channel_mult[-1]
        check(
            c_bottom % self.channels_per_head == 0,
            f"{p}.channels_per_head",
            f"{c_bottom} bottom channels are not divisible by {self.channels_per_head}",
            "adjust channels_per_head",
        )

    def unet_kwargs(self) -> dict:
        """Keyword arguments for `networks.UNet` (everything but preconditioning and precision)."""
        keys = (
            "model_channels",
            "channel_mult",
            "channel_mult_noise",
            "channel_mult_emb",
            "num_blocks",
            "attn_resolutions",
            "channels_per_head",
            "dropout",
            "dropout_res",
            "res_balance",
            "attn_balance",
            "label_balance",
            "concat_balance",
            "clip_act",
            "attention",
        )
        return {k: getattr(self, k) for k in keys}
