"""The frozen networks of a distillation run (`ect.objective: cd | ecd`): the teacher and the optional guide from their
network files, and consistency distillation's target network theta-.

    check_frozen_files(cfg, world_size)          # header only: one UserError line before any GPU work
    parts = Distillation(cfg, engine, ema, device)
    objective = build_objective(cfg.ect, reduce_any, cfg.distill, parts.nets())
    parts.before_step(engine.mode)                # every step: precision follows the run, theta- is re-gathered

The teacher and guide are evaluated, never trained: eval mode, no dropout, no gradients, not in the optimizer and not
in checkpoints (a resumed run reloads them from their files). Their weights sit on the GPU in `replica_dtype`: the
run's parameter copy (bf16 when a bf16/fp16 mode is used, else fp32), and 16-bit under ZeRO-3, so that no GPU holds a
full fp32 copy there (docs/distillation.md measures both). They compute in the run's current precision mode, like the
online network; the MP-Fourier frequencies and phases stay fp32.

theta- is the `target-<mu>` EMA of the fp32 master weights (`engine.ema.EMATracker`, internal profile): sharded like
Adam's state, updated after every applied step (Song et al. 2023, Eq. 8), checkpointed and re-sliced with the other
EMAs. Before each step it is gathered (collective) into a module of the same architecture as the online network.
"""

from __future__ import annotations

from typing import Optional

import torch

from ect_scale.config import Config, NetworkConfig, from_dict, to_dict
from ect_scale.config.base import ConfigError
from ect_scale.ect.distill import DistillNets
from ect_scale.networks.flops import model_stats
from ect_scale.networks.netfile import NetworkFileError, load_network_file, read_network_header
from ect_scale.networks.precond import Precond
from ect_scale.precision.modes import COMPUTE_DTYPE
from ect_scale.train.compute import init_compute

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FIT_FIELDS = ("img_resolution", "img_channels", "sigma_data")  # What a teacher/guide must share with network.*.


def target_profile(mu: float) -> str:
    """The EMA profile name of CD's theta- (its beta is parsed back from the name, exactly)."""
    return f"target-{float(mu)!r}"


def zero3(cfg: Config, world_size: int) -> bool:
    return cfg.engine.zero_stage == 3 and world_size > 1


def replica_dtype(cfg: Config, world_size: int) -> torch.dtype:
    """The dtype of the frozen networks' weights on the GPU (see the module docstring); raises ConfigError for an
    explicit float32 under ZeRO-3."""
    choice = cfg.distill.teacher_dtype
    if choice != "auto":
        if choice == "float32" and zero3(cfg, world_size):
            raise ConfigError(
                "distill.teacher_dtype: float32 under ZeRO-3 gives every GPU a full fp32 copy of the teacher. "
                "Fix: use auto or bfloat16 (a half-precision replica; computation still follows engine.precision), "
                "or ZeRO stage 1/2"
            )
        return DTYPES[choice]
    if zero3(cfg, world_size) or cfg.engine.resolved_param_dtype() == "bf16":
        return torch.bfloat16
    return torch.float32


def check_fit(file_cfg: NetworkConfig, run_cfg: NetworkConfig, option: str, path: str) -> None:
    """A teacher/guide must draw the run's data: same resolution, channels and sigma_data as network.*, and the
    same classes (a guide may also be unconditional, as in classifier-free guidance). Its size may differ."""
    diffs = [
        f"{k}: file={getattr(file_cfg, k)!r} run={getattr(run_cfg, k)!r}"
        for k in FIT_FIELDS
        if getattr(file_cfg, k) != getattr(run_cfg, k)
    ]
    labels_ok = file_cfg.label_dim == run_cfg.label_dim or (option == "guide" and file_cfg.label_dim == 0)
    if not labels_ok:
        diffs.append(f"label_dim (classes): file={file_cfg.label_dim} run={run_cfg.label_dim}")
    if diffs:
        raise NetworkFileError(
            f"{option}: {path} does not fit this run's network and data ({'; '.join(diffs)})",
            f"pick a {option} trained on the same data (resolution, channels, classes), or set network.* to match",
        )


def check_frozen_files(cfg: Config, world_size: int) -> dict[str, tuple[NetworkConfig, dict]]:
    """{option: (NetworkConfig, meta)} of `teacher` and `guide` from their headers, checked against the run (cheap:
    no tensors are read). Raises a UserError naming the option."""
    out = {}
    for option in ("teacher", "guide"):
        path = getattr(cfg, option)
        if path:
            file_cfg, meta = read_network_header(path)
            check_fit(file_cfg, cfg.network, option, path)
            out[option] = (file_cfg, meta)
    if out:
        replica_dtype(cfg, world_size)
    return out


class FrozenNetwork:
    """A network file evaluated without gradients: D(x, sigma, labels) in the run's precision mode."""

    def __init__(self, path: str, dtype: torch.dtype, device, engine_cfg, name: str):
        net, self.meta = load_network_file(path, overrides={"dropout": 0.0, "dropout_res": None})
        self.name, self.path = name, path
        self.module = to_replica(net.eval().requires_grad_(False), dtype, device, engine_cfg)
        self.config: NetworkConfig = net.config
        self.clone_outputs = engine_cfg.compile and engine_cfg.compile_mode == "reduce-overhead"

    @torch.no_grad()
    def __call__(self, x, sigma, labels=None) -> torch.Tensor:
        out = self.module(x, sigma, labels)
        return out.clone() if self.clone_outputs else out  # CUDA-graph outputs are reused by the next replay.

    def set_mode(self, mode: str) -> None:
        self.module.compute_dtype = COMPUTE_DTYPE[mode]


def to_replica(net: Precond, dtype: torch.dtype, device, engine_cfg) -> torch.nn.Module:
    """`net` on `device` with its parameters in `dtype` (buffers stay fp32), the engine's memory format, compiled
    like the online network when the engine compiles."""
    net = net.to(device)
    for p in net.parameters():
        p.data = p.data.to(dtype)
    if engine_cfg.channels_last:
        net.memory_format = torch.channels_last
    if engine_cfg.compile:
        net.compile(dynamic=False, mode=engine_cfg.compile_mode)
    return net


class TargetNetwork:
    """CD's theta-: the `profile` EMA gathered into a module before each step (see the module docstring)."""

    CHUNK_NUMEL = 1 << 26  # Parameters gathered per collective batch (256 MiB of fp32): bounds the transient copy.

    def __init__(self, network_cfg: NetworkConfig, ema, engine, profile: str, dtype: torch.dtype, device, engine_cfg):
        with torch.device("meta"):  # No random init: every parameter is written by `refresh` before it is used.
            net = Precond(from_dict(NetworkConfig, {**to_dict(network_cfg), "compute_dtype": "float32"}, "network"))
        net = net.to_empty(device=device)
        with torch.no_grad():  # The online network's fixed MP-Fourier frequencies and phases.
            buffers = dict(engine.module.named_buffers())
            for name, b in net.named_buffers():
                b.copy_(buffers[name].detach().to(b.device, torch.float32))
        self.module = to_replica(net.train().requires_grad_(False), dtype, device, engine_cfg)
        self.device = torch.device(device)
        self.ema, self.profile, self.shapes = ema, profile, engine.param_shapes
        self.params = dict(self.module.named_parameters())
        self.clone_outputs = engine_cfg.compile and engine_cfg.compile_mode == "reduce-overhead"

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the sharded EMA into the module, a bounded chunk of parameters per gather (collective)."""
        names = list(self.ema.master.names)
        chunk: list[str] = []
        size = 0
        for i, name in enumerate(names):
            chunk.append(name)
            size += self.params[name].numel()
            if size >= self.CHUNK_NUMEL or i == len(names) - 1:
                shadow = self.ema.shadows[self.profile]
                full = self.ema.master.gather(sources=shadow, names=chunk, dst_device=self.device)
                for n, t in full.items():
                    self.params[n].copy_(t.reshape(self.shapes[n]))
                chunk, size = [], 0

    @torch.no_grad()
    def __call__(self, x, sigma, labels=None, dropout_masks=None) -> torch.Tensor:
        out = self.module(x, sigma, labels, dropout_masks=dropout_masks)
        return out.clone() if self.clone_outputs else out

    def set_mode(self, mode: str) -> None:
        self.module.compute_dtype = COMPUTE_DTYPE[mode]


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class Distillation:
    """The teacher, guide and theta- of one process, and what the run reports about them."""

    def __init__(self, cfg: Config, engine, ema, device, world_size: int):
        self.cfg = cfg
        self.dtype = replica_dtype(cfg, world_size)
        d = cfg.distill
        self.teacher = FrozenNetwork(cfg.teacher, self.dtype, device, cfg.engine, "teacher")
        self.guide = FrozenNetwork(cfg.guide, self.dtype, device, cfg.engine, "guide") if cfg.guide else None
        self.target: Optional[TargetNetwork] = None
        if cfg.ect.objective == "cd":
            profile = target_profile(d.target_ema)
            self.target = TargetNetwork(cfg.network, ema, engine, profile, self.dtype, device, cfg.engine)
        self.frozen = [n for n in (self.teacher, self.guide, self.target) if n is not None]

    def nets(self) -> DistillNets:
        return DistillNets(self.teacher, self.guide, self.target)

    def before_step(self, mode: str) -> None:
        """Follow the run's precision mode; gather theta- (collective; CD only)."""
        for n in self.frozen:
            n.set_mode(mode)
        if self.target is not None:
            self.target.refresh()

    def fwd_flops(self, online_fwd_flops: float) -> dict[str, float]:
        """Forward FLOPs per sample by network role (theta- has the online network's architecture)."""
        out = {"teacher": model_stats(self.teacher.config)["fwd_flops"], "target": online_fwd_flops}
        if self.guide is not None:
            out["guide"] = model_stats(self.guide.config)["fwd_flops"]
        return out

    def pretraining_compute(self, fwd: dict[str, float]) -> dict[str, float]:
        """Compute/teacher_* (and guide_*): what the frozen networks' files record about their own training."""
        out = init_compute(self.teacher.meta, fwd["teacher"], role="teacher")
        if self.guide is not None:
            out.update(init_compute(self.guide.meta, fwd["guide"], role="guide"))
        return out

    def rows(self) -> list[tuple[str, str]]:
        """Config-table rows."""
        dtype = str(self.dtype).replace("torch.", "")
        rows = [("teacher", f"{self.cfg.teacher} ({describe(self.teacher, dtype)})")]
        if self.guide is not None:
            rows.append(("guide", f"{self.cfg.guide} ({describe(self.guide, dtype)}), w={self.cfg.distill.guidance:g}"))
        if self.target is not None:
            rows.append(("target", f"theta- = EMA {self.target.profile} of the masters, {dtype} module"))
        return rows


def describe(net: FrozenNetwork, dtype: str) -> str:
    c = net.config
    size = f"{c.model_channels}ch x {c.channel_mult}"
    return f"{size}, frozen {dtype} replica, {param_bytes(net.module) / 2**30:.2f} GiB per GPU"
