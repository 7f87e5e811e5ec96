"""Write EDM2-format snapshot pickles from our own networks, without NVIDIA's code (test helper).

The byte layout follows NVIDIA's public `torch_utils/persistence.py` (facts only): each persistent object
pickles as `torch_utils.persistence._reconstruct_persistent_obj(meta)` with
`meta = dict(type='class', version=6, module_src=<module source>, class_name=<name>, state=<__dict__>)`; the
module `__dict__` holds `_parameters`/`_buffers`/`_modules`, the hook dicts, plain attributes and the recorded
`_init_args`/`_init_kwargs`. `torch.nn.ModuleDict` is pickled normally (NEWOBJ + BUILD). The snapshot is a
`dnnlib.util.EasyDict(encoder=..., dataset_kwargs=..., loss_fn=..., ema=<fp16 Precond>)` (EDM2) or
`dict(ema=<fp32 Precond>)` (ECT). The two NVIDIA modules are registered in `sys.modules` only while pickling.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections import OrderedDict
from typing import Any, Optional

import numpy as np
import torch

from ect_scale.networks.layers import MPConv, MPFourier
from ect_scale.networks.precond import Precond
from ect_scale.networks.unet import Block, UNet

# Module source as a persisted pickle would carry it. If anything exec'd it, it would create MARKER_PATH.
MARKER_ENV = "ECT_SCALE_TEST_MARKER"
HOSTILE_SOURCE = (
    "import os\nopen(os.environ.get('%s', '/tmp/ect_scale_exec_marker'), 'w').write('executed')\n"
    "class Precond: pass\n" % MARKER_ENV
)
_HOOK_DICTS = (
    "_backward_pre_hooks",
    "_backward_hooks",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def _reconstruct_persistent_obj(meta):  # Pickled by reference only; never called in tests.
    raise AssertionError("the fake persistence function must never be called")


class EasyDict(dict):
    """Stands for dnnlib.util.EasyDict when pickling."""


@contextlib.contextmanager
def nvidia_module_names():
    """Make `torch_utils.persistence._reconstruct_persistent_obj` and `dnnlib.util.EasyDict` picklable by name."""
    torch_utils, persistence = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    dnnlib, util = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")
    persistence._reconstruct_persistent_obj, util.EasyDict = _reconstruct_persistent_obj, EasyDict
    torch_utils.persistence, dnnlib.util = persistence, util
    fakes = {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib, "dnnlib.util": util}
    saved = {k: sys.modules.get(k) for k in fakes}
    old = (_reconstruct_persistent_obj.__module__, EasyDict.__module__)
    _reconstruct_persistent_obj.__module__, EasyDict.__module__ = "torch_utils.persistence", "dnnlib.util"
    sys.modules.update(fakes)
    try:
        yield
    finally:
        _reconstruct_persistent_obj.__module__, EasyDict.__module__ = old
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class Persisted:
    """Pickles exactly like an instance of a `@persistence.persistent_class` class."""

    def __init__(self, class_name: str, state: dict, module_src: str = HOSTILE_SOURCE, version: int = 6):
        self.meta = dict(type="class", version=version, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


def module_state(
    module: torch.nn.Module, children: dict, attrs: dict, init_args: tuple, init_kwargs: dict, dtype: torch.dtype
) -> dict:
    """The `__dict__` an EDM2 module pickles with (torch 2.x layout)."""
    state: dict[str, Any] = {"training": False}
    state["_parameters"] = OrderedDict(
        (k, torch.nn.Parameter(v.detach().to(dtype).clone(), requires_grad=False))
        for k, v in module._parameters.items()
        if v is not None
    )
    state["_buffers"] = OrderedDict((k, v.detach().to(dtype).clone()) for k, v in module._buffers.items())
    state["_non_persistent_buffers_set"] = set()
    state.update({k: OrderedDict() for k in _HOOK_DICTS}, _is_full_backward_hook=None)
    state["_modules"] = OrderedDict(children)
    state.update(attrs, _init_args=init_args, _init_kwargs=init_kwargs)
    return state


def precond_kwargs(net: Precond, layout: str) -> dict:
    """Constructor kwargs as EDM2's (or ECT's) training script records them for this network."""
    c = net.config
    kw = dict(
        img_resolution=c.img_resolution,
        img_channels=c.img_channels,
        label_dim=c.label_dim,
        model_channels=c.model_channels,
        channel_mult=list(c.channel_mult),
        num_blocks=c.num_blocks,
        attn_resolutions=list(c.attn_resolutions),
        channels_per_head=c.channels_per_head,
        dropout=c.dropout,
        use_fp16=True,
    )
    if c.logvar_channels and c.logvar_channels != 128:
        kw["logvar_channels"] = c.logvar_channels
    if layout == "ect":
        kw["dropout_res"] = float(c.dropout_res) if c.dropout_res is not None else None
    return kw


def _convert(module: torch.nn.Module, kw: dict, dtype: torch.dtype, src: str, extra_block_kwargs: dict) -> Any:
    children = {k: _convert(m, kw, dtype, src, extra_block_kwargs) for k, m in module._modules.items() if m is not None}
    if isinstance(module, torch.nn.ModuleDict):
        container = torch.nn.ModuleDict()
        container.__dict__["_modules"] = dict(children)  # Persisted children, pickled through BUILD.
        return container
    block_kw = {k: kw[k] for k in ("channels_per_head", "dropout") if k in kw}
    if isinstance(module, Precond):
        c = module.config
        attrs = dict(
            img_resolution=c.img_resolution,
            img_channels=c.img_channels,
            label_dim=c.label_dim,
            use_fp16=True,
            sigma_data=c.sigma_data,
        )
        args, kwargs, name = (), dict(kw), "Precond"
    elif isinstance(module, UNet):
        attrs = dict(label_balance=module.label_balance, concat_balance=module.concat_balance)
        args, kwargs, name = (), {k: v for k, v in kw.items() if k not in ("use_fp16", "logvar_channels")}, "UNet"
    elif isinstance(module, Block):
        attrs = dict(
            out_channels=module.out_channels,
            flavor=module.flavor,
            resample_filter=[1, 1],
            resample_mode=module.resample_mode,
            num_heads=module.num_heads,
            dropout=module.dropout,
            res_balance=module.res_balance,
            attn_balance=module.attn_balance,
            clip_act=module.clip_act,
        )
        cin = (
            module.conv_res0.in_channels
            if module.flavor == "dec"
            else (module.conv_skip.in_channels if module.conv_skip is not None else module.out_channels)
        )
        args = (cin, module.out_channels, module.emb_linear.in_channels)
        kwargs = dict(
            flavor=module.flavor,
            resample_mode=module.resample_mode,
            attention=module.num_heads > 0,
            **block_kw,
            **extra_block_kwargs,
        )
        name = "Block"
    elif isinstance(module, MPConv):
        attrs, args, name = dict(out_channels=module.out_channels), (module.in_channels, module.out_channels), "MPConv"
        kwargs = dict(kernel=list(module.weight.shape[2:]))
    elif isinstance(module, MPFourier):
        attrs, args, kwargs, name = {}, (module.freqs.numel(),), {}, "MPFourier"
    else:
        raise TypeError(f"no EDM2 counterpart for {type(module).__name__}")
    # Absent optional layers (conv_skip, attn_qkv, emb_label, ...) are plain None attributes, as torch stores them.
    attrs.update(
        {
            k: None
            for k in ("conv_skip", "attn_qkv", "attn_proj", "emb_label")
            if k in module.__dict__ and module.__dict__[k] is None
        }
    )
    return Persisted(name, module_state(module, children, attrs, args, kwargs, dtype), src)


def snapshot_objects(
    net: Precond,
    layout: str = "edm2",
    encoder: Optional[str] = "vae",
    dtype=None,
    module_src: str = HOSTILE_SOURCE,
    extra_block_kwargs: Optional[dict] = None,
    precond_extra_kwargs: Optional[dict] = None,
    extra_entries: Optional[dict] = None,
):
    """The object tree NVIDIA's training loop pickles (EDM2: fp16 EasyDict; ECT: fp32 dict with only `ema`)."""
    dtype = dtype or (torch.float16 if layout == "edm2" else torch.float32)
    kw = {**precond_kwargs(net, layout), **(precond_extra_kwargs or {})}
    ema = _convert(net, kw, dtype, module_src, extra_block_kwargs or {})
    if layout == "ect":
        return {"ema": ema, **(extra_entries or {})}
    data = EasyDict()
    if encoder == "vae":
        scale = np.float32(0.5) / np.float32([4.17, 4.62, 3.71, 3.28])
        bias = np.float32(0) - np.float32([5.81, 3.25, 0.12, -2.15]) * scale
        data["encoder"] = Persisted(
            "StabilityVAEEncoder",
            dict(
                _init_args=(),
                _init_kwargs={},
                vae_name="stabilityai/sd-vae-ft-mse",
                scale=scale,
                bias=bias,
                batch_size=8,
                _vae=None,
            ),
            module_src,
        )
    elif encoder == "rgb":
        data["encoder"] = Persisted("StandardRGBEncoder", dict(_init_args=(), _init_kwargs={}), module_src)
    data["dataset_kwargs"] = dict(
        class_name="training.dataset.ImageFolderDataset", path="/data/img.zip", use_labels=True
    )
    data["loss_fn"] = Persisted(
        "EDM2Loss",
        dict(P_mean=-0.4, P_std=1.0, sigma_data=0.5, _init_args=(), _init_kwargs=dict(P_mean=-0.4, P_std=1.0)),
        module_src,
    )
    data["ema"] = ema
    data.update(extra_entries or {})
    return data


def write_snapshot(path, net: Precond, protocol: int = 4, **kwargs) -> None:
    """Pickle `snapshot_objects(net, **kwargs)` to `path` as `pickle.dump` in NVIDIA's training loop does."""
    with nvidia_module_names():
        blob = pickle.dumps(snapshot_objects(net, **kwargs), protocol=protocol)
    with open(path, "wb") as f:
        f.write(blob)
