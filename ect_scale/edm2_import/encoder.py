"""The snapshot's encoder as an ect_scale encoder description (`data.encoders`), with its latent constants.

EDM2's `StabilityVAEEncoder` stores only `scale = final_std / raw_std` and `bias = final_mean - raw_mean * scale`
(float32, per channel; NVlabs/edm2 training/encoders.py) plus its recorded constructor arguments. We take the recorded
(or
default) raw_mean/raw_std/final_mean/final_std, recompute scale and bias exactly as EDM2 does, and require them
to match the stored arrays; if no arguments were recorded and they do not match the defaults, the constants
are solved from scale and bias (raw_std = final_std / scale, raw_mean = (final_mean - bias) / scale).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ect_scale.data.encoders import EDM2_RAW_MEAN, EDM2_RAW_STD, SD_VAE_ID, LatentEncoder, PixelEncoder
from ect_scale.edm2_import.snapshot import Edm2Snapshot
from ect_scale.edm2_import.unpickler import Edm2ImportError

_VAE_POSITIONAL = ("vae_name", "raw_mean", "raw_std", "final_mean", "final_std", "batch_size")
_VAE_DEFAULTS = dict(
    vae_name=SD_VAE_ID, raw_mean=list(EDM2_RAW_MEAN), raw_std=list(EDM2_RAW_STD), final_mean=0.0, final_std=0.5
)


def _edm2_scale_bias(k: dict) -> tuple[np.ndarray, np.ndarray]:
    """scale and bias exactly as EDM2 computes them (float32 arithmetic)."""
    scale = np.float32(k["final_std"]) / np.float32(k["raw_std"])
    return scale, np.float32(k["final_mean"]) - np.float32(k["raw_mean"]) * scale


def _array(snap: Edm2Snapshot, state: dict, name: str) -> np.ndarray:
    value = state.get(name)
    if not isinstance(value, np.ndarray) or value.shape != (4,):
        raise Edm2ImportError(
            f"{snap.source}: encoder.{name} is {type(value).__name__} "
            f"{getattr(value, 'shape', '')}, expected a numpy array of 4 per-channel values"
        )
    return value.astype(np.float32)


def _latent_constants(snap: Edm2Snapshot) -> tuple[dict, str]:
    enc = snap.encoder
    recorded = {**dict(zip(_VAE_POSITIONAL, enc.init_args)), **enc.init_kwargs}
    k = {**_VAE_DEFAULTS, **recorded, "vae_name": enc.state.get("vae_name", recorded.get("vae_name", SD_VAE_ID))}
    scale, bias = _array(snap, enc.state, "scale"), _array(snap, enc.state, "bias")
    want_scale, want_bias = _edm2_scale_bias(k)
    if np.allclose(want_scale, scale, rtol=1e-6, atol=0) and np.allclose(want_bias, bias, rtol=1e-6, atol=1e-7):
        source = "recorded constructor arguments" if recorded else "EDM2 defaults"
        return k, f"{source}, consistent with the stored scale/bias"
    if any(key in recorded for key in ("raw_mean", "raw_std", "final_mean", "final_std")):
        raise Edm2ImportError(
            f"{snap.source}: encoder scale {scale.tolist()} / bias {bias.tolist()} do not follow "
            f"from its recorded arguments {recorded}. Fix: the pickle was altered; re-export it"
        )
    k["raw_std"] = [float(v) for v in np.float32(k["final_std"]) / scale]
    k["raw_mean"] = [float(v) for v in (np.float32(k["final_mean"]) - bias) / scale]
    return k, "solved from the stored scale/bias (they differ from EDM2's defaults)"


def describe_encoder(snap: Edm2Snapshot, img_channels: int) -> tuple[Optional[dict[str, Any]], str]:
    """(encoder description for `meta['encoder']`, a note saying where it came from)."""
    enc = snap.encoder
    if enc is None:
        if img_channels == 3:
            return PixelEncoder().describe(), "assumed RGB pixels (the pickle has no encoder; 3 channels)"
        if img_channels == 4:
            return LatentEncoder().describe(), "assumed EDM2's SD-VAE constants (the pickle has no encoder; 4 channels)"
        return None, (
            f"none (the pickle has no encoder and {img_channels} channels fit neither pixels nor SD-VAE latents)"
        )
    expected = {"StandardRGBEncoder": 3, "StabilityVAEEncoder": 4}
    if enc.class_name not in expected:
        raise Edm2ImportError(
            f"{snap.source}: found encoder class '{enc.class_name}', expected StabilityVAEEncoder "
            "or StandardRGBEncoder (EDM2 training/encoders.py). Fix: ect_scale has no equivalent "
            "of this encoder; add one to ect_scale.data.encoders first"
        )
    if img_channels != expected[enc.class_name]:
        raise Edm2ImportError(
            f"{snap.source}: a {enc.class_name} feeds {expected[enc.class_name]} channels but the "
            f"network takes {img_channels}. Fix: the pickle is inconsistent; re-export it"
        )
    if enc.class_name == "StandardRGBEncoder":
        return PixelEncoder().describe(), "StandardRGBEncoder (uint8 / 127.5 - 1)"
    k, note = _latent_constants(snap)
    desc = LatentEncoder(
        vae=k["vae_name"],
        raw_mean=k["raw_mean"],
        raw_std=k["raw_std"],
        final_mean=k["final_mean"],
        final_std=k["final_std"],
    ).describe()
    return desc, f"StabilityVAEEncoder ({note})"
