"""Every speed option against the plain fp32 eager path, with stated tolerances (issue 8): channels-last,
bf16 compute, fused attention (tests/networks), torch.compile (dropout masks stay shared), fused Adam, and the
GPU prefetcher's exact-resume bookkeeping."""

import copy

import pytest
import torch

from ect_scale.config import ECTConfig
from ect_scale.ect import ECTLoss
from ect_scale.train.prefetch import DevicePrefetcher
from tests.engine.common import ListStream


def _loss_and_grads(net, x0, masks, seed=0):
    net.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(seed)
    out = ECTLoss(ECTConfig(q=2, stage_nimg=100, P_mean=0.0, P_std=1.0))(net, x0, None, 200, gen, masks)
    loss = out.loss.mean()
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.fixture
def setup(tiny_net):
    net = tiny_net(seed=5, dropout=0.3, dropout_res=8).train()
    x0 = torch.randn(4, 4, 16, 16) * 0.5
    masks = net.sample_dropout_masks(4, torch.Generator().manual_seed(1))
    return net, x0, masks


def test_channels_last_matches_contiguous(setup):
    net, x0, masks = setup
    ref_loss, ref_grads = _loss_and_grads(net, x0, masks)
    net_cl = copy.deepcopy(net)
    net_cl.memory_format = torch.channels_last
    masks_cl = {k: v.contiguous(memory_format=torch.channels_last) for k, v in masks.items()}
    loss, grads = _loss_and_grads(net_cl, x0, masks_cl)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for n, g in ref_grads.items():
        torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-5)


def test_bf16_compute_tracks_fp32(setup):
    net, x0, masks = setup
    ref_loss, ref_grads = _loss_and_grads(net, x0, masks)
    net_bf = copy.deepcopy(net)
    net_bf.compute_dtype = torch.bfloat16
    loss, grads = _loss_and_grads(net_bf, x0, {k: v.bfloat16() for k, v in masks.items()})
    assert loss == pytest.approx(ref_loss, rel=0.02)  # bf16 main path: loss within 2 %.
    flat = torch.cat([g.flatten() for g in grads.values()])
    ref = torch.cat([g.flatten() for g in ref_grads.values()])
    assert float(torch.nn.functional.cosine_similarity(flat, ref, dim=0)) > 0.99  # Same descent direction.


@pytest.mark.slow
def test_compile_matches_eager_and_keeps_masks_shared(setup):
    """Through TorchDynamo and AOTAutograd (the graphs, the grad and no-grad passes, the explicit masks) with the
    `aot_eager` backend: inductor's CPU code generation of a forward and backward takes minutes on two cores. Inductor
    itself runs in tests/precision/test_precision_units.py (compiled forward per precision mode) and, compiled for
    training, in tests/precision/test_gpu_modes.py and the GPU benchmarks."""
    net, x0, masks = setup
    ref_loss, ref_grads = _loss_and_grads(net, x0, masks)
    compiled = copy.deepcopy(net)
    compiled.compile(dynamic=False, backend="aot_eager")
    loss, grads = _loss_and_grads(compiled, x0, masks)
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    for n, g in ref_grads.items():
        torch.testing.assert_close(grads[n], g, rtol=1e-3, atol=1e-5)
    # The grad pass and the no-grad pass are different compiled graphs; with the same explicit masks they agree.
    sigma = torch.full((4,), 1.3)
    online = compiled(x0, sigma, None, dropout_masks=masks)
    with torch.no_grad():
        target = compiled(x0, sigma, None, dropout_masks=masks)
    torch.testing.assert_close(online.detach(), target, rtol=1e-5, atol=1e-6)


def test_fused_adam_matches_foreach_adam(setup):
    net, x0, masks = setup
    nets = [copy.deepcopy(net), copy.deepcopy(net)]
    opts = [
        torch.optim.Adam(nets[0].parameters(), lr=1e-2, betas=(0.9, 0.99), foreach=True),
        torch.optim.Adam(nets[1].parameters(), lr=1e-2, betas=(0.9, 0.99), fused=True),
    ]
    for step in range(3):
        for n, o in zip(nets, opts):
            _loss_and_grads(n, x0, masks, seed=step)
            o.step()
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_prefetcher_state_counts_consumed_batches_only():
    import time

    stream = ListStream(rank=0, batch_gpu=2)
    pre = DevicePrefetcher(stream, torch.device("cpu"), depth=3)
    consumed = [next(pre) for _ in range(4)]
    deadline = time.time() + 5
    while stream.index <= 4 and time.time() < deadline:  # Let the producer thread run ahead.
        time.sleep(0.01)
    assert stream.index > 4
    state = pre.state_dict()
    assert state == {"index": 4}  # ...but the state counts consumed batches only.
    pre.close()
    resumed = DevicePrefetcher(ListStream(rank=0, batch_gpu=2), torch.device("cpu"))
    resumed.load_state_dict(state)
    reference = ListStream(rank=0, batch_gpu=2)
    expected = [next(reference) for _ in range(6)]
    for i in range(4):
        assert torch.equal(consumed[i][0], expected[i][0])
    assert torch.equal(next(resumed)[0], expected[4][0])  # Exactly the next unconsumed batch.
    resumed.close()
