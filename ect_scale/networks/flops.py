"""Parameter and FLOP counting on the meta device (no memory, no GPU; seconds even for XXL).

Counting convention follows EDM2's `count_flops` (paper Table 6 "Gflops"): one unit per multiply-accumulate
of convolutions and matrix products, plus one unit per output element of element-wise ops (a few units for
silu/softmax/clamp/lerp). Those units are MACs; hardware FLOPs are 2x that (`fwd_flops`).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ect_scale.config.network import NetworkConfig
from ect_scale.networks.precond import Precond

aten = torch.ops.aten

_FREE = {  # Ops that move or view data: no arithmetic.
    aten.view,
    aten._unsafe_view,
    aten.reshape,
    aten.expand,
    aten.permute,
    aten.transpose,
    aten.t,
    aten.cat,
    aten.unbind,
    aten.select,
    aten.slice,
    aten.clone,
    aten.copy_,
    aten._to_copy,
    aten.detach,
    aten.unsqueeze,
    aten.squeeze,
    aten.ones_like,
    aten.zeros_like,
    aten.empty,
    aten.new_full,
    aten.new_ones,
    aten.split,
    aten.new_empty,
    aten.alias,
    aten.lift_fresh,
    aten.full,
    aten.ones,
    aten.zeros,
    aten.contiguous,
    aten.one_hot,
    aten.as_strided,
    aten._reshape_alias,
    aten.repeat,
    aten.fill_,
    aten.bernoulli_,
    aten.rand,
    aten.empty_like,
    aten.empty_strided,
    aten.masked_fill,
    aten.where,
    aten.scalar_tensor,
}
_WEIGHTED = {
    aten.silu: 4,
    aten._softmax: 4,
    aten.clamp: 3,
    aten.lerp: 3,
    aten.native_dropout: 0,
    aten.rand_like: 0,
    aten.randn_like: 0,
    aten.randn: 0,
    aten.normal: 0,
}


def _numel(shape) -> int:
    return int(math.prod(shape))


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.macs = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in (aten.convolution,):
            w = args[1]  # [out, in/groups, kh, kw]: each output element costs in/groups*kh*kw MACs.
            self.macs["conv"] += _numel(out.shape) * _numel(w.shape[1:])
        elif packet in (aten.mm, aten.bmm):
            self.macs["matmul"] += _numel(out.shape) * args[0].shape[-1]
        elif packet is aten.addmm:
            self.macs["matmul"] += _numel(out.shape) * (args[1].shape[-1] + 1)
        elif (
            packet is aten._scaled_dot_product_flash_attention or packet is aten._scaled_dot_product_efficient_attention
        ):
            q, k = args[0], args[1]
            self.macs["matmul"] += 2 * _numel(q.shape) * k.shape[-2]
        elif packet is aten.linalg_vector_norm:
            self.macs["elementwise"] += _numel(args[0].shape)
        elif packet in _FREE:
            pass
        else:
            res = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(res, torch.Tensor):
                self.macs["elementwise"] += _numel(res.shape) * _WEIGHTED.get(packet, 1)
        return out


def count_params(config: NetworkConfig) -> int:
    with torch.device("meta"):
        net = Precond(config)
    return sum(p.numel() for p in net.parameters())


def model_stats(config: NetworkConfig) -> dict:
    """Parameters and per-sample forward cost of a network config, computed on the meta device."""
    with torch.device("meta"):
        net = Precond(config).eval()
        x = torch.zeros(1, config.img_channels, config.img_resolution, config.img_resolution)
        sigma = torch.ones(1)
        labels = torch.zeros(1, config.label_dim) if config.label_dim else None
    counter = _Counter()
    with torch.no_grad(), counter:
        net(x, sigma, labels)
    macs = dict(counter.macs)
    total_macs = sum(macs.values())
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "fwd_macs": total_macs,  # EDM2 Table 6 "Gflops" (x1e9), a MAC-based count.
        "fwd_flops": 2 * total_macs,  # Hardware FLOPs per sample, one forward pass.
        "fwd_matmul_flops": 2 * (macs.get("conv", 0) + macs.get("matmul", 0)),  # Tensor-core part only.
        "train_step_flops": 8 * total_macs,  # ECT step: grad forward + backward (~2x) + no-grad target forward.
        "macs_by_kind": macs,
    }
