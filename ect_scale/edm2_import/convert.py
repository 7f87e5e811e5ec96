"""EDM2 snapshot pickle -> ect_scale network file (safetensors + NetworkConfig + meta), verified by reloading.

    result = import_edm2("edm2-img512-s-2147483-0.130.pkl", "pretrained/edm2-img512-s-2147483-0.130.safetensors")
    print(result.summary())

Tensors are stored as float32 by default (the pickle's fp16 values upcast exactly; the trainer's master weights
are fp32); `dtype="keep"` stores the pickle's dtype (half the file size, same values once loaded).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import fsspec
import torch

from ect_scale.config import NetworkConfig
from ect_scale.edm2_import.encoder import describe_encoder
from ect_scale.edm2_import.hparams import infer_network_config, match_preset
from ect_scale.edm2_import.snapshot import Edm2Snapshot, read_snapshot
from ect_scale.edm2_import.unpickler import Edm2ImportError
from ect_scale.networks.netfile import load_network_file, save_network_file

# EDM2's snapshot/reconstruction names: <prefix>-<kimg:07d>-<sigma_rel:.3f>.pkl (NVlabs/edm2 reconstruct_phema.py).
_SNAPSHOT_NAME = re.compile(r"(.*)-(\d+)-(\d+\.\d+)\.pkl")
_DTYPES = {"float32": torch.float32, "keep": None}


@dataclass
class ImportResult:
    source: str
    out_path: Optional[str]
    config: NetworkConfig
    preset: Optional[str]  # Exact architecture match, or None.
    preset_diffs: list[str]  # Differences to the closest preset when there is no exact match.
    closest_preset: Optional[str]
    num_params: int
    num_tensors: int
    pickle_dtype: str
    stored_dtype: str
    encoder_note: str
    meta: dict[str, Any]
    verify_note: str = ""
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        c = self.config
        arch = (
            f"{c.img_channels}x{c.img_resolution}x{c.img_resolution}, labels {c.label_dim}, channels "
            f"{c.model_channels} x {c.channel_mult}, {c.num_blocks} blocks/level, "
            f"attention at {c.attn_resolutions}, "
            f"dropout {c.dropout}"
            + (f" at <= {c.dropout_res} px" if c.dropout_res else "")
            + f", sigma_data {c.sigma_data}, logvar head {c.logvar_channels or 'none'}"
        )
        preset = (
            f"{self.preset} (exact architecture match)"
            if self.preset
            else f"none; closest {self.closest_preset} differs in {', '.join(self.preset_diffs[:4])}"
        )
        enc = self.meta.get("encoder")
        lines = [
            f"source     {self.source}",
            f"network    EDM2 Precond, persistence v{self.meta['edm2']['persistence_version']}, module source "
            f"sha256 {self.meta['edm2']['module_sha256'][:16]}... (kept as text, never executed)",
            f"preset     {preset}",
            f"arch       {arch}",
            f"params     {self.num_params:,} ({self.num_params / 1e6:.2f} M) in {self.num_tensors} tensors; "
            f"pickle {self.pickle_dtype}, stored {self.stored_dtype}",
            f"encoder    {json.dumps(enc) if enc else 'none'} [{self.encoder_note}]",
        ]
        if self.meta.get("ema"):
            lines.append(f"ema        {self.meta['ema']}, trained {self.meta['edm2'].get('nimg', '?'):,} images")
        lines += [f"WARNING    {w}" for w in self.warnings]
        if self.out_path:
            lines.append(f"wrote      {self.out_path}")
        if self.verify_note:
            lines.append(f"verified   {self.verify_note}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        return repr(value)


def _provenance(snap: Edm2Snapshot, encoder_note: str) -> dict[str, Any]:
    """meta['edm2']: where the network came from (file name, images seen, EMA profile, loss, dataset)."""
    out: dict[str, Any] = {
        "file": os.path.basename(snap.source.rstrip("/")),
        "keys": snap.keys,
        "persistence_version": 6,
        "module_sha256": snap.module_sha256,
        "use_fp16": snap.root.attrs.get("use_fp16"),
        "encoder_note": encoder_note,
    }
    match = _SNAPSHOT_NAME.fullmatch(out["file"])
    if match:
        kimg = int(match.group(2))
        out.update(kimg=kimg, nimg=(kimg * 1000 + 999) // 1024 * 1024, sigma_rel=float(match.group(3)))
    if snap.loss_fn is not None:
        plain = {k: v for k, v in snap.loss_fn.state.items() if not k.startswith("_")}
        out["loss_fn"] = _jsonable({"class": snap.loss_fn.class_name, **plain})
    if snap.dataset_kwargs is not None:
        out["dataset_kwargs"] = _jsonable(snap.dataset_kwargs)
    return out


def convert_snapshot(snap: Edm2Snapshot) -> tuple[NetworkConfig, dict[str, Any], str, list[str]]:
    """(NetworkConfig with the matched preset named, meta for the network file, encoder note, warnings)."""
    config = infer_network_config(snap)
    best, diffs = match_preset(config)
    if not diffs:
        config.preset = best
    encoder, note = describe_encoder(snap, config.img_channels)
    meta: dict[str, Any] = {"source": snap.source, "edm2": _provenance(snap, note)}
    if encoder is not None:
        meta["encoder"] = encoder
    if "sigma_rel" in meta["edm2"]:
        meta["ema"] = f"power-{meta['edm2']['sigma_rel']:.3f}"
    warnings = []
    loss_sigma = meta["edm2"].get("loss_fn", {}).get("sigma_data")
    if isinstance(loss_sigma, (int, float)) and abs(loss_sigma - config.sigma_data) > 1e-12:
        warnings.append(
            f"loss_fn.sigma_data={loss_sigma} differs from the network's sigma_data={config.sigma_data}; "
            "the network's value is used (set ect.sigma_data to it)"
        )
    return config, meta, note, warnings


def verify_network_file(
    path: str, tensors: dict[str, torch.Tensor], config: NetworkConfig, meta: dict, forward: bool = True
) -> str:
    """Reload `path` into `Precond`: every tensor must equal the pickle's (as float32); optionally run a forward."""
    net, meta_read = load_network_file(path)
    state = net.state_dict()
    differing = [k for k, t in tensors.items() if not torch.equal(state[k], t.to(torch.float32))]
    if differing or net.config != config or meta_read != json.loads(json.dumps(meta)):
        raise Edm2ImportError(
            f"{path}: the written file does not reproduce the pickle (tensors differing: "
            f"{differing[:5]}). Fix: report this as a bug"
        )
    note = f"reloaded into Precond: {len(tensors)} tensors equal the pickle's"
    if forward:
        g = torch.Generator().manual_seed(0)
        c = config
        x = torch.randn(2, c.img_channels, c.img_resolution, c.img_resolution, generator=g)
        sigma = torch.tensor([0.5, 5.0])
        labels = torch.arange(2) % c.label_dim if c.label_dim else None
        with torch.no_grad():
            d = net.eval()(x * sigma.view(-1, 1, 1, 1), sigma, labels)
        if not torch.isfinite(d).all():
            raise Edm2ImportError(f"{path}: the imported network produces non-finite outputs. Fix: check the pickle")
        note += f"; forward D(x; sigma=0.5, 5) finite, rms {d.square().mean().sqrt().item():.4f}"
    return note


def import_edm2(
    in_path: str,
    out_path: Optional[str],
    dtype: str = "float32",
    verify: bool = True,
    forward: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> ImportResult:
    """Read an EDM2 snapshot pickle safely, infer its NetworkConfig, write and verify an ect_scale network file."""
    if dtype not in _DTYPES:
        raise Edm2ImportError(f"dtype: unknown value {dtype!r}, expected one of {sorted(_DTYPES)}. Fix: use float32")
    t0 = time.time()
    log(f"reading {in_path} (restricted unpickler: nothing from the file is executed)")
    snap = read_snapshot(in_path)
    seconds = {"read": time.time() - t0}
    config, meta, note, warnings = convert_snapshot(snap)
    pickle_dtypes = "/".join(sorted({str(t.dtype).replace("torch.", "") for t in snap.tensors.values()}))
    num_params = sum(t.numel() for k, t in snap.tensors.items() if k not in snap.buffers)
    best, diffs = match_preset(config)
    result = ImportResult(
        source=in_path,
        out_path=out_path,
        config=config,
        preset=None if diffs else best,
        preset_diffs=diffs,
        closest_preset=best,
        num_params=num_params,
        num_tensors=len(snap.tensors),
        pickle_dtype=pickle_dtypes,
        stored_dtype="float32" if _DTYPES[dtype] else pickle_dtypes,
        encoder_note=note,
        meta=meta,
        warnings=warnings,
        seconds=seconds,
    )
    if out_path is None:
        return result
    log(f"writing {out_path} ({result.stored_dtype})")
    t0 = time.time()
    save_network_file(out_path, snap.tensors, config, meta, dtype=_DTYPES[dtype])
    seconds["write"] = time.time() - t0
    if verify:
        log("verifying: reloading into Precond" + (" and running a forward pass" if forward else ""))
        t0 = time.time()
        result.verify_note = verify_network_file(out_path, snap.tensors, config, meta, forward)
        seconds["verify"] = time.time() - t0
    return result


def output_exists(path: str) -> bool:
    fs, fspath = fsspec.core.url_to_fs(path)
    return fs.exists(fspath)
