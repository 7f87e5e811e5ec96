"""Compute accounting: the hardware's peak, for MFU."""

from __future__ import annotations

from typing import Optional

import torch

# Dense bf16 peak FLOP/s by device name (torchtitan's table; H200 = H100 SXM compute).
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10", 125e12),
    ("V100", 125e12),
]


def peak_flops(device: torch.device) -> Optional[float]:
    """Dense bf16 peak of the device, or None (e.g. on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS:
        if key in name:
            return value
    return None
