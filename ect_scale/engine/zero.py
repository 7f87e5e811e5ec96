"""The DeepSpeed engine, built from our config. The only module that imports deepspeed.

What it adds to a plain `deepspeed.initialize`:
  * forced weight normalisation (EDM2 Eq. 66) on the fp32 master weights inside the optimizer step, right
    after Adam updates a partition and before DeepSpeed copies it to the bf16 parameters and all-gathers them:
    no extra gather, one all-reduce of per-row norms (`master.MasterWeights`);
  * a non-finite guard: a step is skipped on every rank when any rank's loss was not finite or the global
    gradient norm is not finite (bf16 ZeRO-1/2 has no overflow check of its own: deepspeed `runtime/utils.py`
    get_global_norm masks a non-finite norm to -1);
  * precision modes (`ect_scale.precision.modes`): the U-Net's compute dtype and TF32 are set per mode, the parameter
    copy is bf16 or fp32 (`engine.param_dtype`), and fp16 compute runs with dynamic loss scaling: the loss is
    scaled before backward and the gradients are unscaled (and clipped) inside the step hook, on every stage;
  * the pretrained fp32 weights are written into the fp32 master copy (DeepSpeed would otherwise start from the
    bf16-rounded module), and MP-Fourier buffers stay fp32 (their random frequencies are fixed constants);
  * the learning rate is set per step from images seen (EDM2's inverse-square-root schedule).
Gradients are averaged over the global batch: each micro-batch backpropagates its mean loss, DeepSpeed divides
by the accumulation rounds and averages over ranks, so the loss scale is independent of the world size.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import torch

from ect_scale.config import EngineConfig, OptimConfig, TrainLoopConfig
from ect_scale.config.base import merge_dicts
from ect_scale.engine.master import MasterWeights, storage_key
from ect_scale.networks.layers import MPFourier
from ect_scale.precision.modes import COMPUTE_DTYPE, LossScaler, set_tf32
from ect_scale.runtime import dist


def deepspeed_config(e: EngineConfig, o: OptimConfig, train: TrainLoopConfig, world_size: int) -> dict:
    """The DeepSpeed JSON for this run (printed at startup; keys as in deepspeed 0.19.8 `runtime/config.py` and
    `runtime/zero/config.py`)."""
    rounds = train.accumulation_rounds(world_size)
    bf16 = e.resolved_param_dtype() == "bf16"
    on_gpu = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    zero: dict = {"stage": e.zero_stage}
    if e.zero_stage > 0:
        zero.update(
            overlap_comm=e.overlap_comm and on_gpu,
            contiguous_gradients=True,
            reduce_scatter=True,
            reduce_bucket_size=int(e.reduce_bucket_size),
            allgather_bucket_size=int(e.reduce_bucket_size),
        )
    if e.zero_stage == 3:
        zero.update(stage3_param_persistence_threshold=int(1e5), stage3_prefetch_bucket_size=int(5e7))
    if e.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    adam = {
        "lr": o.lr,
        "betas": list(o.betas),
        "eps": o.eps,
        "weight_decay": o.weight_decay,
        "adam_w_mode": False,
        "torch_adam": True,
    }  # Plain Adam (DeepSpeed's "Adam" means AdamW otherwise).
    if on_gpu and e.offload_optimizer == "none":
        adam["fused"] = True
    config = {
        "train_batch_size": train.batch_size,
        "train_micro_batch_size_per_gpu": train.batch_gpu,
        "gradient_accumulation_steps": rounds,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        # With loss scaling the step hook unscales and clips (DeepSpeed would clip the scaled norm).
        "gradient_clipping": 0.0 if uses_loss_scaling(e) else o.grad_clip,
        "optimizer": {"type": "Adam", "params": adam},
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "Fail"},
    }
    if bf16:
        config["communication_data_type"] = e.communication_dtype
        config["data_types"] = {"grad_accum_dtype": e.grad_accum_dtype}
    if e.offload_optimizer == "cpu":
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def uses_loss_scaling(engine_cfg) -> bool:
    return "fp16" in engine_cfg.modes_used()


def build_loss_scaler(engine_cfg) -> Optional[LossScaler]:
    """The fp16 loss scaler of this run (None when no fp16 mode is used)."""
    if not uses_loss_scaling(engine_cfg):
        return None
    if engine_cfg.loss_scale == "dynamic":
        return LossScaler(dynamic=True, window_nimg=engine_cfg.loss_scale_window_nimg)
    return LossScaler(init_scale=float(engine_cfg.loss_scale), dynamic=False)


def _promote_scalars(net: torch.nn.Module) -> None:
    """0-dim parameters (EDM2's gains) become shape [1]: deepspeed 0.19.8 cannot broadcast 0-dim tensors
    (`p.data.view(torch.uint8)`). Broadcasting makes this invisible to the network; exports restore the shape."""
    for p in net.parameters():
        if p.ndim == 0:
            p.data = p.data.reshape(1)


@dataclass
class StepResult:
    applied: bool  # False if the step was skipped (non-finite loss or gradient on some rank).
    grad_norm: object  # Global gradient norm before clipping: a float or a device tensor (None if unknown).


class Engine:
    """A DeepSpeed engine around `net` with master-weight hooks. Call `micro_step` for every micro-batch."""

    def __init__(
        self,
        net: torch.nn.Module,
        engine_cfg: EngineConfig,
        optim_cfg: OptimConfig,
        train_cfg: TrainLoopConfig,
        fp32_state: Optional[dict[str, torch.Tensor]] = None,
        ds_overrides: Optional[dict] = None,
    ):
        import deepspeed

        self.world_size = dist.get_world_size()
        self.batch_size = train_cfg.batch_size
        self.rounds = train_cfg.accumulation_rounds(self.world_size)
        if fp32_state is None:
            fp32_state = {n: p.detach().to(torch.float32).clone() for n, p in net.named_parameters()}
        buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
        self.param_shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
        _promote_scalars(net)
        self.ds_config = merge_dicts(
            deepspeed_config(engine_cfg, optim_cfg, train_cfg, self.world_size), ds_overrides or {}
        )
        params = [p for p in net.parameters() if p.requires_grad]
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=net, model_parameters=params, config=self.ds_config
        )
        self.module = self.engine.module
        self._restore_fp32_buffers(buffers)
        if engine_cfg.channels_last:
            self.module.memory_format = torch.channels_last
        if engine_cfg.compile:
            # In place: parameters stay the same objects (views into ZeRO's flat buffers). Dropout masks are explicit
            # inputs, so the online and target passes share them under compilation too.
            if engine_cfg.combo_kernels:
                import torch._inductor.config as inductor_config

                inductor_config.combo_kernels = True
            self.module.compile(dynamic=False, mode=engine_cfg.compile_mode)
        self.master = MasterWeights(
            self.module, self.optimizer, engine_cfg.zero_stage, use_cuda_graphs=engine_cfg.graph_weight_norm
        )
        self._inner = getattr(self.optimizer, "optimizer", self.optimizer)
        self._install_step_hook()
        self.load_master_(fp32_state)
        self._force_skip, self._flags, self._applied, self.last_flags = False, None, False, None
        self.skipped_steps = 0
        self.scaler = build_loss_scaler(engine_cfg)
        self.clip = float(optim_cfg.grad_clip or 0.0)
        self._scale, self.last_scale_note = 1.0, ""
        self.mode: Optional[str] = None
        self.set_precision(engine_cfg.precision)

    def set_precision(self, mode: str) -> None:
        """Compute the U-Net's main path in `mode` from the next forward on (its dtype and TF32; a compiled module
        compiles once more for a new dtype). Master weights, optimizer and parameter storage are unchanged."""
        self.module.compute_dtype = COMPUTE_DTYPE[mode]
        set_tf32(mode)
        self.mode = mode

    @property
    def loss_scale(self) -> float:
        """The factor the next backward multiplies the loss by (1 outside fp16 mode)."""
        return self.scaler.scale if self.scaler is not None and self.mode == "fp16" else 1.0

    # ------------------------------------------------------------------ setup
    def _restore_fp32_buffers(self, buffers: dict[str, torch.Tensor]) -> None:
        """DeepSpeed casts the module to bf16, buffers included; MP-Fourier frequencies/phases must stay exact."""
        named = dict(self.module.named_buffers())
        for mname, m in self.module.named_modules():
            if isinstance(m, MPFourier):
                for b in ("freqs", "phases"):
                    key = f"{mname}.{b}" if mname else b
                    setattr(m, b, buffers[key].to(named[key].device, torch.float32))

    @torch.no_grad()
    def load_master_(self, state: dict[str, torch.Tensor]) -> None:
        """Write full fp32 tensors into the master weights and refresh the low-precision copies (collective)."""
        self.master.check_layout()
        self.master.scatter_(state)
        self.refresh_low_precision()

    def refresh_low_precision(self) -> None:
        """Copy the fp32 masters to the module's (bf16) parameters on every rank (collective for ZeRO-1/2)."""
        opt = self.optimizer
        if hasattr(opt, "fp32_partitioned_groups_flat"):  # ZeRO-3: local partitions only.
            for lp, hp in zip(opt.fp16_partitioned_groups_flat, opt.fp32_partitioned_groups_flat):
                if lp is not None:
                    lp.data.copy_(hp.data)
        elif hasattr(opt, "update_lp_params"):  # ZeRO-1/2 and BF16_Optimizer: copy + all-gather.
            opt.update_lp_params()

    @torch.no_grad()
    def place_optimizer_state(self) -> None:
        """Put Adam's state where torch's Adam expects it after a checkpoint load: moments on the master's device,
        `step` on that device for fused/capturable Adam and on the CPU otherwise. DeepSpeed's universal-checkpoint
        load restores `step` as a CPU tensor, which the fused CUDA kernel rejects (found on 4 -> 2 H200s)."""
        for group in self._inner.param_groups:
            on_device = bool(group.get("fused") or group.get("capturable"))
            for p in group["params"]:
                state = self._inner.state.get(p, {})
                for name, value in list(state.items()):
                    if not torch.is_tensor(value):
                        continue
                    target = (p.device if on_device else torch.device("cpu")) if name == "step" else p.device
                    if value.device != target:
                        state[name] = value.to(target)

    def _install_step_hook(self) -> None:
        """Wrap the basic optimizer's step: skip it when asked or when the gradient norm is not finite, and apply
        forced weight normalisation to the partitions it just updated."""
        inner = self._inner
        original = inner.step

        def step(*args, **kwargs):
            if not self._decide():
                return None
            self._unscale_and_clip(inner)
            out = original(*args, **kwargs)
            updated = {storage_key(p) for g in inner.param_groups for p in g["params"]}
            self.master.forced_weight_norm_(updated)
            self._applied = True
            return out

        inner.step = step

    def _decide(self) -> bool:
        """Step or skip: one host read of the global gradient norm and the trainer's flags (a single sync)."""
        parts = [self._norm_tensor()]
        if self._flags is not None:
            parts.append(self._flags.detach().float().reshape(-1).to(parts[0].device))
        host = torch.cat(parts).tolist()
        self.last_flags = host[1:] if self._flags is not None else []
        self._host_norm = host[0]
        norm_ok = math.isfinite(host[0]) and host[0] >= 0
        return norm_ok and not self._force_skip and not any(f > 0 for f in self.last_flags[:1])

    def _unscale_and_clip(self, inner) -> None:
        """Divide the gradients by the loss scale and clip them by their true norm (only when a loss scaler is
        active; DeepSpeed clips otherwise). Runs on this rank's gradient partitions just before Adam."""
        if self.scaler is None:
            return
        factor, _ = LossScaler.unscale_factor_for(self._scale, self._host_norm, self.clip)
        if factor != 1.0:
            grads = [p.grad for g in inner.param_groups for p in g["params"] if p.grad is not None]
            torch._foreach_mul_(grads, factor)

    def _norm_tensor(self) -> torch.Tensor:
        norm = getattr(self.optimizer, "_global_grad_norm", None)
        if norm is None or self.optimizer is self._inner:  # No ZeRO: gradients are already all-reduced.
            grads = [p.grad for g in self._inner.param_groups for p in g["params"] if p.grad is not None]
            if not grads:
                return torch.zeros(1, device=dist.device())
            return torch.stack(torch._foreach_norm(grads)).norm().reshape(1).float()
        if torch.is_tensor(norm):
            return norm.detach().float().reshape(1)
        return torch.tensor([float(norm)], device=dist.device())

    # ------------------------------------------------------------------ training
    def forward(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    __call__ = forward

    def micro_step(
        self, loss: torch.Tensor, lr: float, skip: bool = False, flags: Optional[torch.Tensor] = None
    ) -> Optional[StepResult]:
        """Backward for one micro-batch; at the accumulation boundary also set `lr`, step and report.

        Skip the step with `skip=True` (same on every rank) or with `flags[0] > 0`, where `flags` is a device
        tensor the caller has all-reduced (MAX) across ranks; reading it is folded into the one host sync of the
        step. `last_flags` then holds the host copy of `flags` (e.g. a stop request in flags[1])."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        self._scale = self.loss_scale
        self.engine.backward(loss * self._scale if self._scale != 1.0 else loss)
        if not boundary:
            self.engine.step()
            return None
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self._force_skip, self._flags, self._applied, self.last_flags = skip, flags, False, None
        self.engine.step()
        if self.last_flags is None:  # DeepSpeed skipped the step itself (non-finite norm) before our hook ran.
            self.last_flags = flags.detach().float().tolist() if flags is not None else []
        self._force_skip, self._flags = False, None
        if not self._applied:
            self.skipped_steps += 1
        self.last_scale_note = ""
        if self.scaler is not None and self.mode == "fp16":
            self.last_scale_note = self.scaler.update(self._applied, self.batch_size)
        norm = self.engine.get_global_grad_norm()
        if norm is not None and self._scale != 1.0:
            norm = norm / self._scale
        return StepResult(applied=self._applied, grad_norm=norm)

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm) / self._scale

    def is_boundary(self) -> bool:
        return self.engine.is_gradient_accumulation_boundary()

    # ------------------------------------------------------------------ views
    def full_state(self, dst_device="cpu") -> dict[str, torch.Tensor]:
        """fp32 parameters (from the masters) plus buffers: a world-size-independent state dict (collective)."""
        state = self.master.gather(dst_device=dst_device)
        state = {n: t.reshape(self.param_shapes[n]) for n, t in state.items()}
        for n, b in self.module.named_buffers():
            state[n] = b.detach().to(dst_device).clone()
        return state
