"""EDM2 network hyperparameters from a snapshot, from three sources that must agree.

  1. *declared*: the constructor arguments the persistence decorator recorded (`Precond`/`UNet`/`Block`
     `_init_args`/`_init_kwargs`), completed with the official constructor defaults;
  2. *observed*: tensor shapes (widths, levels, blocks, attention, label/log-variance heads) and the plain
     attributes every module stores (`num_heads`, `dropout`, balances, `clip_act`, `sigma_data`, ...);
  3. *rebuilt*: our `Precond` built from the resulting `NetworkConfig` must reproduce every tensor name and
     shape and every recorded module attribute (`check_expressible`).
A disagreement is an error naming the field and both values; nothing is silently defaulted.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

import torch

from ect_scale.config import NetworkConfig, from_dict, to_dict
from ect_scale.config.presets import PRESETS
from ect_scale.edm2_import.snapshot import Edm2Snapshot
from ect_scale.edm2_import.unpickler import Edm2ImportError
from ect_scale.networks.precond import Precond

# Official constructor signatures (NVlabs/edm2 training/networks_edm2.py) plus ECT's UNet
# `dropout_res` (locuslab/ect imgnet). Names equal NetworkConfig's field names.
PRECOND_POSITIONAL = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_data", "logvar_channels")
PRECOND_DEFAULTS = dict(use_fp16=True, sigma_data=0.5, logvar_channels=128)
UNET_DEFAULTS = dict(
    model_channels=192,
    channel_mult=[1, 2, 3, 4],
    channel_mult_noise=None,
    channel_mult_emb=None,
    num_blocks=3,
    attn_resolutions=[16, 8],
    label_balance=0.5,
    concat_balance=0.5,
    dropout_res=None,
)
BLOCK_DEFAULTS = dict(
    resample_filter=[1, 1], channels_per_head=64, dropout=0.0, res_balance=0.3, attn_balance=0.3, clip_act=256
)
BLOCK_SET_BY_UNET = ("flavor", "resample_mode", "attention")
# Attributes compared between the pickle's modules and our rebuilt modules (same names on both sides).
COMPARED_ATTRS = {
    "Precond": ("img_resolution", "img_channels", "label_dim", "sigma_data"),
    "UNet": ("label_balance", "concat_balance"),
    "MPConv": ("out_channels",),
    "Block": (
        "out_channels",
        "flavor",
        "resample_mode",
        "num_heads",
        "dropout",
        "res_balance",
        "attn_balance",
        "clip_act",
    ),
}
# NetworkConfig fields that are run settings, not architecture (ignored when matching presets).
_NOT_ARCHITECTURE = ("preset", "dropout", "dropout_res", "compute_dtype", "attention")
_LAYER = re.compile(r"(\d+)x(\d+)_(conv|down|up|in\d+|block\d+)")
_EXPECTED_LAYERS = "'{res}x{res}_conv', '{res}x{res}_block{i}', '{res}x{res}_down/_up', '{res}x{res}_in0/in1'"


def _fail(snap: Edm2Snapshot, what: str, fix: str) -> Edm2ImportError:
    return Edm2ImportError(f"{snap.source}: {what}. Fix: {fix}")


# ----------------------------------------------------------------------------
# 1. Declared constructor arguments.


def declared_kwargs(snap: Edm2Snapshot) -> dict[str, Any]:
    """Recorded Precond/UNet constructor arguments, completed with the official defaults; unknown ones raise."""
    root = snap.root
    declared = dict(zip(PRECOND_POSITIONAL, root.init_args))
    declared.update(root.init_kwargs)
    unet = snap.modules.get("unet")
    for k, v in (unet.init_kwargs if unet else {}).items():
        if k in declared and declared[k] != v:
            raise _fail(
                snap,
                f"Precond was built with {k}={declared[k]!r} but its UNet with {k}={v!r}",
                "the pickle is inconsistent; re-export it from EDM2's code",
            )
        declared[k] = v
    known = {*PRECOND_POSITIONAL, *UNET_DEFAULTS, *BLOCK_DEFAULTS}
    unknown: dict[str, list[str]] = {f"{k}={v!r}": ["Precond"] for k, v in declared.items() if k not in known}
    for m in snap.modules.values():
        for k, v in m.init_kwargs.items() if m.class_name == "Block" else ():
            if k not in BLOCK_DEFAULTS and k not in BLOCK_SET_BY_UNET:
                unknown.setdefault(f"{k}={v!r}", []).append(f"Block {m.path}")
    if unknown:
        found = [
            f"{kv} ({where[0]}" + (f" and {len(where) - 1} more)" if len(where) > 1 else ")")
            for kv, where in unknown.items()
        ]
        raise _fail(
            snap,
            f"found constructor arguments ect_scale's EDM2 network does not implement: "
            f"{', '.join(found[:6])}; expected only {', '.join(sorted(known))}",
            "this is a modified EDM2 architecture; extend ect_scale.networks and NetworkConfig to express it",
        )
    full = {**PRECOND_DEFAULTS, **UNET_DEFAULTS, **BLOCK_DEFAULTS, **declared}
    ints = lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, int) for x in v)  # noqa: E731
    if not (
        isinstance(full["model_channels"], int)
        and full["model_channels"] > 0
        and ints(full["channel_mult"])
        and ints(full["attn_resolutions"])
        and ints(full["resample_filter"])
        and isinstance(full["dropout"], (int, float))
    ):
        raise _fail(
            snap,
            "found malformed constructor arguments (model_channels "
            f"{full['model_channels']!r}, channel_mult {full['channel_mult']!r}, attn_resolutions "
            f"{full['attn_resolutions']!r}, dropout {full['dropout']!r}), expected ints, lists of ints and "
            "a float",
            "the pickle is damaged or not from EDM2's code",
        )
    if list(full["resample_filter"]) != [1, 1]:
        raise _fail(
            snap,
            f"found resample_filter={full['resample_filter']!r}, expected [1, 1] (EDM2's box filter, "
            "the only one ect_scale implements)",
            "use a network trained with the default resample_filter",
        )
    return full


# ----------------------------------------------------------------------------
# 2. Observed values: tensor shapes and module attributes.


def _layers(snap: Edm2Snapshot, part: str) -> list[tuple[str, int, str]]:
    """(name, resolution, kind) of `unet.<part>` in order, e.g. ('64x64_block0', 64, 'block0')."""
    out = []
    for m in snap.children(f"unet.{part}"):
        name = m.path.rsplit(".", 1)[-1]
        match = _LAYER.fullmatch(name)
        if not match or match.group(1) != match.group(2):
            raise _fail(
                snap,
                f"found {part}oder layer '{name}', expected EDM2 names {_EXPECTED_LAYERS}",
                "this is not an EDM2 U-Net",
            )
        out.append((name, int(match.group(1)), match.group(3)))
    if not out:
        raise _fail(snap, f"found no unet.{part} layers, expected an EDM2 U-Net", "check that 'ema' is an EDM2 network")
    return out


def _shape(snap: Edm2Snapshot, key: str, required: bool = False) -> Optional[torch.Size]:
    t = snap.tensors.get(key)
    if t is None and required:
        raise _fail(snap, f"found no tensor '{key}', expected one in every EDM2 U-Net", "this is not an EDM2 network")
    return None if t is None else t.shape


def _uniform(snap: Edm2Snapshot, blocks: list, attr: str) -> Any:
    values = {repr(b.attrs[attr]) for b in blocks if attr in b.attrs}
    if len(values) > 1:
        raise _fail(
            snap,
            f"blocks use different {attr} values {sorted(values)}, expected one value per network "
            "(NetworkConfig has one)",
            "this network needs per-block settings ect_scale does not express",
        )
    return next((b.attrs[attr] for b in blocks if attr in b.attrs), None)


def _dropout(snap: Edm2Snapshot, blocks: list) -> tuple[Optional[float], Optional[int]]:
    """(p, dropout_res) from per-block dropout: p everywhere, or p at resolutions <= dropout_res (ECT) and 0 above."""
    per_res = [
        (int(b.path.rsplit(".", 1)[-1].split("x")[0]), float(b.attrs["dropout"]))
        for b in blocks
        if isinstance(b.attrs.get("dropout"), (int, float))
    ]
    ps = {p for _, p in per_res if p}
    if not ps:
        return (0.0 if per_res else None), None
    if len(ps) > 1:
        raise _fail(
            snap,
            f"blocks use different dropout probabilities {sorted(ps)}, expected one p (optionally only "
            "at resolutions <= dropout_res)",
            "this network needs per-block dropout ect_scale does not express",
        )
    p = ps.pop()
    with_p = [r for r, q in per_res if q]
    without = [r for r, q in per_res if not q]
    if without and min(without) <= max(with_p):
        raise _fail(
            snap,
            f"dropout {p} at {sorted(set(with_p))} px but 0 at {sorted(set(without))} px, expected "
            "dropout at every resolution <= dropout_res",
            "this dropout pattern is not expressible",
        )
    return p, (max(with_p) if without else None)


def observed_values(snap: Edm2Snapshot, model_channels: int) -> dict[str, Any]:
    """Hyperparameters read from tensor shapes and module attributes (`model_channels` scales the widths)."""
    enc, dec = _layers(snap, "enc"), _layers(snap, "dec")
    conv = _shape(snap, f"unet.enc.{enc[0][0]}.weight")
    if enc[0][2] != "conv" or conv is None:
        raise _fail(snap, f"first encoder layer is '{enc[0][0]}', expected '{{res}}x{{res}}_conv'", "not an EDM2 U-Net")
    res_levels = sorted({r for _, r, _ in enc}, reverse=True)
    widths, counts = [], []
    for r in res_levels:
        names = [n for n, rr, kind in enc if rr == r and kind.startswith("block")]
        counts.append(len(names))
        shapes = {_shape(snap, f"unet.enc.{n}.conv_res1.weight", True)[0] for n in names} if names else {0}
        widths.append(max(shapes))
    if len(set(counts)) != 1 or counts[0] == 0 or any(w % model_channels for w in widths):
        raise _fail(
            snap,
            f"encoder levels {res_levels} have {counts} blocks of widths {widths}, expected the same "
            f"number of blocks per level and widths that are multiples of model_channels={model_channels}",
            "this U-Net layout is not expressible by NetworkConfig",
        )
    attn = lambda part, layers: {
        r
        for n, r, k in layers
        if k.startswith("block")  # noqa: E731
        and f"unet.{part}.{n}.attn_qkv.weight" in snap.tensors
    }
    blocks = [
        m for m in snap.modules.values() if m.class_name == "Block" and m.path.startswith(("unet.enc.", "unet.dec."))
    ]
    heads = {
        b.attrs["out_channels"] // b.attrs["num_heads"]
        for b in blocks
        if isinstance(b.attrs.get("num_heads"), int)
        and b.attrs["num_heads"] > 0
        and isinstance(b.attrs.get("out_channels"), int)
    }
    if len(heads) > 1:
        raise _fail(
            snap,
            f"attention blocks use channels_per_head {sorted(heads)}, expected one value",
            "this network needs per-block head widths ect_scale does not express",
        )
    dropout, dropout_res = _dropout(snap, blocks)
    label, logvar = _shape(snap, "unet.emb_label.weight"), _shape(snap, "logvar_fourier.freqs")
    cnoise, cemb = _shape(snap, "unet.emb_fourier.freqs", True)[0], _shape(snap, "unet.emb_noise.weight", True)[0]
    if cnoise % model_channels or cemb % model_channels:
        raise _fail(
            snap,
            f"noise/embedding widths {cnoise}/{cemb} are not multiples of model_channels={model_channels}",
            "this embedding layout is not expressible by NetworkConfig",
        )
    obs = dict(
        img_resolution=enc[0][1],
        img_channels=conv[1] - 1,
        label_dim=label[1] if label is not None else 0,
        channel_mult=[w // model_channels for w in widths],
        num_blocks=counts[0],
        attn_resolutions=sorted(attn("enc", enc) | attn("dec", dec), reverse=True),
        noise_channels=cnoise,
        emb_channels=cemb,
        logvar_channels=logvar[0] if logvar is not None else 0,
        channels_per_head=heads.pop() if heads else None,
        dropout=dropout,
        dropout_res=dropout_res,
    )
    for attr in ("res_balance", "attn_balance", "clip_act"):
        obs[attr] = _uniform(snap, blocks, attr)
    unet = snap.modules.get("unet")
    for attr in ("label_balance", "concat_balance"):
        obs[attr] = unet.attrs.get(attr) if unet else None
    obs["sigma_data"] = snap.root.attrs.get("sigma_data")
    return obs


# ----------------------------------------------------------------------------
# Declared vs observed -> NetworkConfig.

_CONFIG_KEYS = (
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
    "dropout",
    "dropout_res",
    "res_balance",
    "attn_balance",
    "label_balance",
    "concat_balance",
    "clip_act",
    "sigma_data",
    "logvar_channels",
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _block_dropout(p: float, dropout_res: Optional[float], resolutions: list[int]) -> list[float]:
    return [p if dropout_res is None or r <= dropout_res else 0.0 for r in resolutions]


def _reconcile(declared: dict, obs: dict) -> tuple[dict, list[str]]:
    """Config values (observed where observable, declared otherwise) and 'field: declared X, observed Y' conflicts."""
    mc = int(declared["model_channels"])
    levels = [obs["img_resolution"] >> i for i in range(len(obs["channel_mult"]))]
    widths = [mc * m for m in obs["channel_mult"]]
    # Declared values are compared by what they build: widths, per-level dropout, attention at existing levels.
    compared = {key: (declared[key], obs.get(key)) for key in _CONFIG_KEYS if key in declared}
    compared["channel_mult_noise"] = (
        mc * (declared["channel_mult_noise"] or declared["channel_mult"][0]),
        obs["noise_channels"],
    )
    compared["channel_mult_emb"] = (
        mc * (declared["channel_mult_emb"] or max(declared["channel_mult"])),
        obs["emb_channels"],
    )
    observed_dropout = None if obs["dropout"] is None else _block_dropout(obs["dropout"], obs["dropout_res"], levels)
    compared["dropout"] = (_block_dropout(declared["dropout"], declared["dropout_res"], levels), observed_dropout)
    compared["attn_resolutions"] = (
        sorted(set(declared["attn_resolutions"]) & set(levels), reverse=True),
        obs["attn_resolutions"],
    )
    # ECT's Precond accepts logvar_channels but builds no head (locuslab/ect imgnet): the tensors decide.
    compared.pop("dropout_res"), compared.pop("model_channels"), compared.pop("logvar_channels", None)
    conflicts = [
        f"{key}: recorded init kwargs give {d!r}, tensors/attributes give {o!r}"
        for key, (d, o) in compared.items()
        if o is not None and not _same(d, o)
    ]
    values = {key: obs[key] if obs.get(key) is not None else declared.get(key) for key in _CONFIG_KEYS}
    values.update(
        model_channels=mc,
        dropout=declared["dropout"],
        dropout_res=declared["dropout_res"],
        channel_mult_noise=None if obs["noise_channels"] == widths[0] else obs["noise_channels"] // mc,
        channel_mult_emb=None if obs["emb_channels"] == max(widths) else obs["emb_channels"] // mc,
    )
    if values["dropout_res"] is not None:  # ECT passes a float; a cut-off at or above the top level changes nothing.
        values["dropout_res"] = None if values["dropout_res"] >= max(levels) else int(values["dropout_res"])
    return values, conflicts


def infer_network_config(snap: Edm2Snapshot) -> NetworkConfig:
    """The `NetworkConfig` of the snapshot's `ema` network; raises if the sources disagree or it is not expressible."""
    declared = declared_kwargs(snap)
    obs = observed_values(snap, int(declared["model_channels"]))
    values, conflicts = _reconcile(declared, obs)
    if conflicts:
        raise _fail(
            snap,
            "the recorded constructor arguments disagree with the network's tensors and attributes: "
            + "; ".join(conflicts),
            "the pickle was altered after construction; re-export it from EDM2's code",
        )
    try:
        config = from_dict(NetworkConfig, values, "network")
    except ValueError as e:
        raise _fail(
            snap,
            f"its hyperparameters are not a valid ect_scale network ({e})",
            "this EDM2 variant is outside what NetworkConfig expresses",
        ) from None
    check_expressible(config, snap)
    return config


# ----------------------------------------------------------------------------
# 3. Rebuild and compare; preset matching.


def _our_class(module: torch.nn.Module) -> str:
    cls = type(module)
    return cls.__name__ if cls.__module__.startswith("ect_scale.") else f"{cls.__module__}.{cls.__qualname__}"


def check_expressible(config: NetworkConfig, snap: Edm2Snapshot) -> None:
    """Our `Precond(config)` must have exactly the pickle's tensors (names, shapes), modules and attributes."""
    with torch.device("meta"):
        net = Precond(config)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in snap.tensors.items()}
    problems = [f"tensor {k} missing from the pickle" for k in ours if k not in theirs]
    problems += [f"tensor {k} {theirs[k]} has no counterpart in ect_scale" for k in theirs if k not in ours]
    problems += [
        f"tensor {k}: pickle {theirs[k]}, ect_scale {ours[k]}" for k in ours if k in theirs and ours[k] != theirs[k]
    ]
    modules = dict(net.named_modules())
    for path, rec in snap.modules.items():
        mod = modules.get(path)
        if mod is None or _our_class(mod) != rec.class_name:
            problems.append(
                f"module {path or '<root>'}: pickle {rec.class_name}, ect_scale "
                f"{_our_class(mod) if mod is not None else 'nothing'}"
            )
            continue
        for attr in COMPARED_ATTRS.get(rec.class_name, ()):
            mine = getattr(mod, attr, None)
            if attr in rec.attrs and not _same(rec.attrs[attr], mine):
                problems.append(f"{path or '<root>'}.{attr}: pickle {rec.attrs[attr]!r}, ect_scale {mine!r}")
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        brief = {k: v for k, v in to_dict(config).items() if k not in _NOT_ARCHITECTURE}
        raise _fail(
            snap,
            f"ect_scale's network built from the inferred hyperparameters {brief} differs from the "
            f"pickle: {'; '.join(problems[:8])}{more}",
            "this network is an EDM2 variant our NetworkConfig cannot express",
        )


def match_preset(config: NetworkConfig) -> tuple[Optional[str], list[str]]:
    """(name, []) for the preset with this exact architecture, else (closest name, differing fields)."""
    fields = [k for k in to_dict(config) if k not in _NOT_ARCHITECTURE]
    best: tuple[Optional[str], list[str]] = (None, fields)
    for name in sorted(PRESETS):
        ref = from_dict(NetworkConfig, {"preset": name}, "network")
        diffs = [
            f"{k}={getattr(config, k)!r} (preset {getattr(ref, k)!r})"
            for k in fields
            if not _same(getattr(config, k), getattr(ref, k))
        ]
        if len(diffs) < len(best[1]):
            best = (name, diffs)
    return best
