"""Network files: one safetensors file holding a network's tensors plus its config as metadata.

This is the interchange format between tools: `tools/import_edm2.py` writes it from NVIDIA's pickles, the
trainer's `init:` reads it, EMA exports and `tools/export.py` write it, and the evaluator samples from it.
No pickles, no code: metadata is JSON. Paths may be local or any fsspec URL (s3://...).

Metadata keys: `ect_scale.format` = "network/1"; `ect_scale.network` = NetworkConfig as JSON;
`ect_scale.meta` = free-form JSON (source, nimg, ema sigma_rel, latent normalisation constants, ...).
"""

from __future__ import annotations

import json
from typing import Any, Optional

import fsspec
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ect_scale.config import NetworkConfig, from_dict, to_dict
from ect_scale.networks.precond import Precond
from ect_scale.runtime.errors import UserError

FORMAT = "network/1"


class NetworkFileError(UserError, ValueError):
    """A network file is missing, unreadable, or not an ect_scale network file."""


def save_network_file(
    path: str,
    state_dict: dict[str, torch.Tensor],
    config: NetworkConfig,
    meta: Optional[dict[str, Any]] = None,
    dtype: Optional[torch.dtype] = None,
) -> None:
    """Write tensors (optionally cast to `dtype`) and config to `path`, atomically on local filesystems."""
    tensors = {
        k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in state_dict.items()
    }
    metadata = {
        "ect_scale.format": FORMAT,
        "ect_scale.network": json.dumps(to_dict(config)),
        "ect_scale.meta": json.dumps(meta or {}),
    }
    blob = st_save(tensors, metadata=metadata)
    fs, fspath = fsspec.core.url_to_fs(path)
    parent = fspath.rsplit("/", 1)[0] if "/" in fspath else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = fspath + ".partial"
    with fs.open(tmp, "wb") as f:
        f.write(blob)
    fs.mv(tmp, fspath)


_NOT_FOUND_FIX = "check the path, or create it with tools/import_edm2.py (from an EDM2 pickle) or tools/export.py"
_HEADER_LIMIT = 100 << 20  # safetensors' own limit on the JSON header.


def read_network_file(path: str) -> tuple[dict[str, torch.Tensor], NetworkConfig, dict]:
    """(state_dict, NetworkConfig, meta) of a network file."""
    try:
        with fsspec.open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise NetworkFileError(f"network file not found: {path}", _NOT_FOUND_FIX) from None
    try:
        tensors = st_load(blob)
        header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    except Exception as e:  # safetensors raises various errors on corrupt input
        raise NetworkFileError(f"{path}: not a readable safetensors file ({e})", "re-export or re-import it") from None
    config, meta = _parse_header(header, path)
    return tensors, config, meta


def read_network_header(path: str) -> tuple[NetworkConfig, dict]:
    """(NetworkConfig, meta) of a network file, reading only its header (cheap for multi-GB files and URLs)."""
    try:
        with fsspec.open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= _HEADER_LIMIT:
                raise ValueError(f"header size {size}")
            header = json.loads(f.read(size))
    except FileNotFoundError:
        raise NetworkFileError(f"network file not found: {path}", _NOT_FOUND_FIX) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise NetworkFileError(f"{path}: not a readable safetensors file ({e})", "re-export or re-import it") from None
    return _parse_header(header, path)


def _parse_header(header: dict, path: str) -> tuple[NetworkConfig, dict]:
    metadata = header.get("__metadata__", {}) or {}
    if metadata.get("ect_scale.format") != FORMAT:
        raise NetworkFileError(
            f"{path}: not an ect_scale network file (format {metadata.get('ect_scale.format')!r}, "
            f"expected {FORMAT!r}). Fix: convert EDM2 pickles with tools/import_edm2.py"
        )
    config = from_dict(NetworkConfig, json.loads(metadata["ect_scale.network"]), "network")
    return config, json.loads(metadata.get("ect_scale.meta", "{}"))


def load_network_file(path: str, device=None, overrides: Optional[dict[str, Any]] = None) -> tuple[Precond, dict]:
    """Build a `Precond` from a network file. `overrides` may change non-structural fields (dropout, compute_dtype)."""
    tensors, config, meta = read_network_file(path)
    if overrides:
        config = from_dict(NetworkConfig, {**to_dict(config), **overrides}, "network")
    net = Precond(config)
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise NetworkFileError(
            f"{path}: tensors do not match the stored config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}). Fix: re-export the file"
        )
    return (net.to(device) if device is not None else net), meta


def check_compatible(file_config: NetworkConfig, run_config: NetworkConfig, path: str) -> None:
    """Raise if a network file's architecture differs from the run's (dropout/precision may differ)."""
    structural = (
        "img_resolution",
        "img_channels",
        "label_dim",
        "model_channels",
        "channel_mult",
        "channel_mult_noise",
        "channel_mult_emb",
        "num_blocks",
        "attn_resolutions",
        "channels_per_head",
        "logvar_channels",
    )
    diffs = [
        f"{k}: file={getattr(file_config, k)!r} run={getattr(run_config, k)!r}"
        for k in structural
        if getattr(file_config, k) != getattr(run_config, k)
    ]
    if diffs:
        raise NetworkFileError(
            f"init: {path} has a different architecture than network.* ({'; '.join(diffs)}). "
            "Fix: set network.preset to the file's preset, or pick the matching file"
        )
