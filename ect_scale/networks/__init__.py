"""EDM2 networks: magnitude-preserving layers, the U-Net, EDM preconditioning, counters (pure math)
and the network file format (`netfile`)."""

from ect_scale.networks.layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample
from ect_scale.networks.precond import Precond, build_network, edm_coefficients
from ect_scale.networks.unet import Block, UNet
from ect_scale.networks.weight_norm import forced_weight_norm_, max_row_norm_error, mp_weights, row_scale

__all__ = [
    "MPConv",
    "MPFourier",
    "mp_cat",
    "mp_silu",
    "mp_sum",
    "normalize",
    "resample",
    "Precond",
    "build_network",
    "edm_coefficients",
    "Block",
    "UNet",
    "forced_weight_norm_",
    "max_row_norm_error",
    "mp_weights",
    "row_scale",
]
