"""EDM preconditioning around the EDM2 U-Net, with the learned log-variance head (EDM2 Eq. 21).

D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))     (EDM, Karras et al. 2022, Eq. 7)
  c_skip = sigma_d^2 / (sigma^2 + sigma_d^2)
  c_out  = sigma sigma_d / sqrt(sigma^2 + sigma_d^2)
  c_in   = 1 / sqrt(sigma^2 + sigma_d^2)
  c_noise = ln(sigma) / 4
In ECT, time equals noise level (t = sigma) and this same D is the consistency function f(x, t).
"""

from __future__ import annotations

from typing import Optional

import torch

from ect_scale.config.network import NetworkConfig
from ect_scale.networks.layers import MPConv, MPFourier
from ect_scale.networks.unet import UNet

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) of EDM's preconditioning (Karras et al. 2022, Table 1)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class Precond(torch.nn.Module):
    """The denoiser / consistency function D(x, sigma, labels). Parameter names match EDM2's `Precond`."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.label_dim = config.label_dim
        self.sigma_data = config.sigma_data
        self.compute_dtype = _DTYPES[config.compute_dtype]
        self.memory_format = torch.contiguous_format  # Set to torch.channels_last for NHWC convolutions (speed only).
        self.unet = UNet(
            img_resolution=config.img_resolution,
            img_channels=config.img_channels,
            label_dim=config.label_dim,
            **config.unet_kwargs(),
        )
        if config.logvar_channels:
            self.logvar_fourier = MPFourier(config.logvar_channels)
            self.logvar_linear = MPConv(config.logvar_channels, 1, kernel=[])
        else:
            self.logvar_fourier = self.logvar_linear = None

    @property
    def has_logvar(self) -> bool:
        return self.logvar_linear is not None

    def _labels(self, class_labels: Optional[torch.Tensor], n: int, device) -> Optional[torch.Tensor]:
        if self.label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros([n, self.label_dim], device=device)
        if class_labels.ndim == 1 and not class_labels.is_floating_point():
            return torch.nn.functional.one_hot(class_labels.long(), self.label_dim).to(torch.float32)
        return class_labels.to(torch.float32).reshape(-1, self.label_dim)

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        class_labels: Optional[torch.Tensor] = None,
        *,
        dropout_masks: Optional[dict[str, torch.Tensor]] = None,
        return_logvar: bool = False,
    ):
        """x: [N,C,H,W]; sigma: scalar or [N]; class_labels: one-hot [N,label_dim] or int [N].

        Returns D(x, sigma) in float32 (and the log-variance u(sigma), shape [N,1,1,1], if requested).
        """
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        labels = self._labels(class_labels, x.shape[0], x.device)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        x_in = (c_in * x).to(self.compute_dtype).contiguous(memory_format=self.memory_format)
        F_x = self.unet(x_in, c_noise.flatten(), labels, dropout_masks=dropout_masks)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        if return_logvar:
            if not self.has_logvar:
                raise RuntimeError("return_logvar=True needs the log-variance head; set network.logvar_channels > 0")
            logvar = self.logvar_linear(self.logvar_fourier(c_noise.flatten())).reshape(-1, 1, 1, 1)
            return D_x, logvar  # u(sigma), EDM2 Eq. 21.
        return D_x

    # ------------------------------------------------------------------
    def dropout_mask_shapes(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], float]]:
        """Mask name -> ((N, C, H, W), p) for every block whose dropout is active."""
        out = {}
        for key, (blk, res) in self.unet.dropout_blocks().items():
            out[key] = ((batch_size, blk.out_channels, res, res), blk.dropout)
        return out

    def sample_dropout_masks(
        self,
        batch_size: int,
        generator: Optional[torch.Generator] = None,
        device=None,
        dtype: Optional[torch.dtype] = None,
    ) -> dict[str, torch.Tensor]:
        """Explicit inverted-dropout masks (values 0 or 1/(1-p)) for one forward pass.

        Pass the same dict to ECT's online and target passes so both use identical masks (locuslab/ect imgnet
        training/loss.py restores the RNG state for this).
        """
        device = device if device is not None else next(self.parameters()).device
        dtype = dtype or self.compute_dtype
        masks = {}
        for key, (shape, p) in self.dropout_mask_shapes(batch_size).items():
            keep = torch.rand(shape, generator=generator, device=device) >= p
            masks[key] = (keep.to(dtype) * (1.0 / (1.0 - p))).contiguous(memory_format=self.memory_format)
        return masks


def build_network(config: NetworkConfig, device=None) -> Precond:
    """Construct a `Precond` from its config (randomly initialised, as in EDM2)."""
    net = Precond(config)
    return net.to(device) if device is not None else net
