"""Engine.place_optimizer_state: after a (universal) checkpoint load, Adam's `step` must sit on the parameters'
device for fused/capturable Adam and on the CPU otherwise; moments always on the parameters' device.
The 'meta' device stands in for CUDA (DeepSpeed restores `step` on the CPU, which fused CUDA Adam rejects)."""

import types

import torch

from ect_scale.engine.zero import Engine


def _fake_engine(fused: bool):
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    opt = types.SimpleNamespace(
        param_groups=[{"params": [p], "fused": fused, "capturable": False}],
        state={p: {"step": torch.tensor(7.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3, device="meta")}},
    )
    return types.SimpleNamespace(_inner=opt), opt.state[p]


def test_fused_adam_gets_step_on_the_parameter_device():
    eng, state = _fake_engine(fused=True)
    Engine.place_optimizer_state(eng)
    assert {k: v.device.type for k, v in state.items()} == {"step": "meta", "exp_avg": "meta", "exp_avg_sq": "meta"}


def test_plain_adam_keeps_step_on_cpu():
    eng, state = _fake_engine(fused=False)
    Engine.place_optimizer_state(eng)  # (A meta tensor cannot be copied back to the CPU, so start there.)
    assert state["step"].device.type == "cpu" and state["exp_avg"].device.type == "meta"
