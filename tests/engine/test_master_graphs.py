"""Forced weight normalisation of the masters replayed as CUDA graphs equals the eager path bit for bit.

The graph path only exists on CUDA; on CPU the same call must take the eager path. Both are checked against the
definition (EDM2 Eq. 66: every row of every MPConv weight ends with norm sqrt(fan_in), up to eps)."""

from __future__ import annotations

import pytest
import torch

from ect_scale.engine.master import MasterWeights
from ect_scale.networks import build_network
from tests.engine.common import tiny_cfg


def _masters(device: str, graphs: bool):
    torch.manual_seed(0)
    net = build_network(tiny_cfg(0).network).to(device)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.7)  # Off the unit sphere.
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    return net, MasterWeights(net, opt, zero_stage=0, use_cuda_graphs=graphs)


def _check(device: str) -> None:
    net_a, eager = _masters(device, graphs=False)
    net_b, graphed = _masters(device, graphs=True)
    for step in range(3):  # The first call captures, later calls replay; weights change in between.
        with torch.no_grad():
            for pa, pb in zip(net_a.parameters(), net_b.parameters()):
                noise = torch.randn(pa.shape, generator=torch.Generator().manual_seed(step)).to(device)
                pa.add_(noise)
                pb.add_(noise)
        eager.forced_weight_norm_()
        graphed.forced_weight_norm_()
        for (name, pa), pb in zip(net_a.named_parameters(), net_b.parameters()):
            assert torch.equal(pa, pb), f"{name} differs at step {step}"
        assert graphed.max_row_norm_error() < 1e-3
    return graphed


def test_graph_flag_falls_back_to_eager_on_cpu():
    graphed = _check("cpu")
    assert graphed._graphs == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_match_eager_bitwise():
    graphed = _check("cuda")
    assert len(graphed._graphs) == 1
    graphed.rebuild()
    assert graphed._graphs == {}
