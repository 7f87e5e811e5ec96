"""Named network presets: EDM2's ImageNet-512 (latent) and ImageNet-64 (pixel) sizes, plus tiny test nets.

Values are EDM2's (paper Table 6; NVlabs/edm2 train_edm2.py `config_presets`). Only `model_channels` and the
pretraining dropout
vary between the EDM2 sizes; ECT recipes override `dropout`/`dropout_res` in `configs/`.
"""

from __future__ import annotations

# Architecture shared by every EDM2 preset (NVlabs/edm2 training/networks_edm2.py, UNet defaults).
_EDM2_COMMON = dict(
    img_resolution=64,
    channel_mult=[1, 2, 3, 4],
    num_blocks=3,
    attn_resolutions=[16, 8],
    channels_per_head=64,
    label_dim=1000,
    sigma_data=0.5,
    logvar_channels=128,
)

# name -> (model_channels, EDM2 pretraining dropout, Table-6 Mparams)
_EDM2_SIZES = {
    "xs": (128, 0.00, 124.7),
    "s": (192, 0.00, 280.2),
    "m": (256, 0.10, 497.8),
    "l": (320, 0.10, 777.5),
    "xl": (384, 0.10, 1119.3),
    "xxl": (448, 0.10, 1523.2),
}

PRESETS: dict[str, dict] = {}
#: Parameter counts in millions from EDM2 Table 6, for tests and `tools/model_stats.py`.
TABLE6_MPARAMS: dict[str, float] = {}

for _size, (_mc, _drop, _mp) in _EDM2_SIZES.items():
    PRESETS[f"edm2-img512-{_size}"] = dict(_EDM2_COMMON, img_channels=4, model_channels=_mc, dropout=_drop)
    TABLE6_MPARAMS[f"edm2-img512-{_size}"] = _mp
    if _size in ("s", "m", "l", "xl"):
        PRESETS[f"edm2-img64-{_size}"] = dict(_EDM2_COMMON, img_channels=3, model_channels=_mc, dropout=_drop)
        TABLE6_MPARAMS[f"edm2-img64-{_size}"] = _mp

# Tiny nets with the same structure (attention at 8 and 4 px, two levels) for CPU tests and the demo.
PRESETS["tiny-latent"] = dict(
    img_resolution=16,
    img_channels=4,
    label_dim=10,
    model_channels=16,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[8],
    channels_per_head=16,
    dropout=0.0,
    sigma_data=0.5,
    logvar_channels=16,
)
PRESETS["tiny-pixel"] = dict(PRESETS["tiny-latent"], img_channels=3)
# The quickstart's network: scikit-learn's 8x8 grayscale digits at their native resolution, 10 classes, two levels
# (8x8, 4x4 with attention), 0.7M parameters: a teacher good enough to draw digits trains on two CPU cores in minutes.
PRESETS["demo-digits8"] = dict(
    img_resolution=8,
    img_channels=1,
    label_dim=10,
    model_channels=32,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[4],
    channels_per_head=32,
    dropout=0.0,
    sigma_data=0.5,
    logvar_channels=32,
)
# The digits scaling study's widths (docs/scaling.md): demo-digits8 with `model_channels` 8, 16 and 32 and
# attention heads of 16 channels, so that, as between EDM2's sizes, a wider net has more heads (1, 2, 4 at 4x4).
for _mc in (8, 16, 32):
    PRESETS[f"demo-digits8-w{_mc}"] = dict(PRESETS["demo-digits8"], model_channels=_mc, channels_per_head=16)
# The GPU scaling study's widths (benchmarks/scaling_gpu.sh): the digits upsampled to 32x32, three levels
# (32, 16, 8 px; attention at 8) like EDM2's U-Net on CIFAR-sized images; 1.2M, 4.8M and 19.2M parameters.
for _mc in (32, 64, 128):
    PRESETS[f"demo-digits32-w{_mc}"] = dict(
        PRESETS["demo-digits8"], img_resolution=32, channel_mult=[1, 2, 2], attn_resolutions=[8], model_channels=_mc
    )
PRESETS["demo-digits16"] = dict(
    img_resolution=16,
    img_channels=3,
    label_dim=10,
    model_channels=32,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[8],
    channels_per_head=32,
    dropout=0.0,
    sigma_data=0.5,
    logvar_channels=32,
)
PRESETS["demo-pixel32"] = dict(
    img_resolution=32,
    img_channels=3,
    label_dim=10,
    model_channels=32,
    channel_mult=[1, 2, 2],
    num_blocks=1,
    attn_resolutions=[8],
    channels_per_head=32,
    dropout=0.0,
    sigma_data=0.5,
    logvar_channels=32,
)


def preset_names() -> list[str]:
    return sorted(PRESETS)
