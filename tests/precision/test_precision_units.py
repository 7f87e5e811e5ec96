"""Precision modes as pure pieces: the schedule (a function of images seen), the parameter-copy rule, the fp16
loss scaler's policy and state, the rounding measurement and the per-stage report (CPU, small nets)."""

import math

import pytest
import torch

from ect_scale.config import ConfigError, ECTConfig, load_config
from ect_scale.precision.modes import COMPUTE_DTYPE, LossScaler, mode_at, precision_mode
from ect_scale.precision.report import format_table, last_stage_summary, report
from ect_scale.precision.rounding import measure

URL = ["--data.kind=synthetic"]


def test_schedule_switches_at_stage_boundaries_only():
    cfg = load_config(
        None, URL + ["--engine.precision=bf16", "--engine.precision_schedule=[2:fp16, 3:tf32]", "--ect.stage_nimg=1000"]
    )
    assert [mode_at(n, cfg.engine, cfg.ect) for n in (0, 999, 1000, 1999, 2000, 2999, 3000, 10**9)] == [
        "bf16",
        "bf16",
        "bf16",
        "bf16",
        "fp16",
        "fp16",
        "tf32",
        "tf32",
    ]
    assert cfg.engine.modes_used() == ["bf16", "fp16", "tf32"]
    assert cfg.engine.resolved_param_dtype() == "bf16"  # A bf16/fp16 mode is used: the bf16 parameter copy.
    assert load_config(None, URL + ["--engine.precision=tf32"]).engine.resolved_param_dtype() == "fp32"
    assert (
        load_config(None, URL + ["--engine.precision=fp16", "--engine.param_dtype=fp32"]).engine.resolved_param_dtype()
        == "fp32"
    )


@pytest.mark.parametrize(
    "bad,match", [("[2:fp8]", "cannot parse"), ("[3:bf16, 1:fp16]", "increase strictly"), ("[fp16]", "cannot parse")]
)
def test_schedule_errors_name_the_option_and_fix(bad, match):
    with pytest.raises(ConfigError, match=rf"engine\.precision_schedule: .*{match}.*Fix:"):
        load_config(None, URL + [f"--engine.precision_schedule={bad}"])


def test_training_precision_is_engine_precision():
    with pytest.raises(ConfigError, match=r"network\.compute_dtype: training computes in engine\.precision"):
        load_config(None, URL + ["--network.compute_dtype=bfloat16"])
    with pytest.raises(ConfigError, match=r"engine\.zero_stage: bf16 parameters need ZeRO stage >= 1"):
        load_config(None, URL + ["--engine.zero_stage=0", "--engine.precision=fp16"])
    load_config(None, URL + ["--engine.zero_stage=0", "--engine.precision=fp16", "--engine.param_dtype=fp32"])


def test_loss_scaler_policy_and_state():
    s = LossScaler(init_scale=8.0, window_nimg=100)
    assert s.update(False, 10) == "loss scale 8 -> 4" and s.scale == 4.0 and s.overflows == 1
    assert s.update(True, 60) == "" and s.scale == 4.0
    assert s.update(True, 60) == "loss scale 4 -> 8" and s.clean_nimg == 0  # 120 clean images >= window.
    other = LossScaler()
    other.load_state_dict(s.state_dict())
    assert other.state_dict() == s.state_dict()
    fixed = LossScaler(init_scale=1.0, dynamic=False)
    assert fixed.update(False, 10) == "" and fixed.scale == 1.0 and fixed.overflows == 1
    floor = LossScaler(init_scale=1.0)
    floor.update(False, 10)
    assert floor.scale == 1.0  # Never below min_scale.
    factor, true_norm = LossScaler.unscale_factor_for(1024.0, 1024.0 * 5.0, clip=1.0)
    assert true_norm == pytest.approx(5.0) and factor == pytest.approx(1 / 1024 / (5.0 + 1e-6))
    factor, _ = LossScaler.unscale_factor_for(1024.0, 1024.0 * 0.5, clip=1.0)
    assert factor == 1 / 1024  # Under the clip: only unscaled.
    _, inf_norm = LossScaler.unscale_factor_for(1024.0, math.inf, clip=1.0)
    assert math.isinf(inf_norm)


def test_precision_mode_context_restores_dtype_and_tf32(tiny_net):
    net = tiny_net()
    before = torch.backends.cuda.matmul.allow_tf32
    with precision_mode(net, "fp16"):
        assert net.compute_dtype == COMPUTE_DTYPE["fp16"] and not torch.backends.cuda.matmul.allow_tf32
    with precision_mode(net, "tf32"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert net.compute_dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 == before


def test_measure_orders_the_modes(tiny_net):
    net = tiny_net(seed=2)
    x0 = torch.randn(4, 4, 16, 16) * 0.5
    rows = {r.mode: r for r in measure(net, x0, None, 2.0, 1.95, ["fp32", "fp16", "bf16"])}
    assert rows["fp32"].error == 0.0 and rows["fp32"].signal > 0
    assert 0 < rows["fp16"].error < rows["bf16"].error  # 11 significand bits beat 8.


def test_report_rows_per_stage_and_summary(tiny_net):
    net = tiny_net(seed=1, dropout=0.2, dropout_res=8).train().requires_grad_(True)
    ect = ECTConfig(q=4, stage_nimg=100, P_mean=0.0, P_std=1.0, c=0.01)
    x0, labels = torch.randn(4, 4, 16, 16) * 0.5, torch.randint(10, (4,))
    result = report(
        net,
        x0,
        labels,
        ect,
        stages=[0, 3],
        t_grid=[0.2, 2.0],
        modes=["fp16", "bf16", "fp16@bf16"],
        grads=True,
        grad_batches=[(x0, labels), (torch.randn(4, 4, 16, 16) * 0.5, labels)],
    )
    stages = sorted({r["stage"] for r in result["rows"]})
    assert stages == [0, 3]  # At stage 0 and t = 0.2, r = 0 (target x0): no row.
    assert len([r for r in result["rows"] if r["stage"] == 0]) == 1
    last = [r for r in result["rows"] if r["stage"] == 3]
    assert all(r["dt_over_t"] < 0.05 and r["errors"]["bf16"] > r["errors"]["fp16"] for r in last)
    assert {"fp16", "bf16", "minibatch"} <= set(result["gradients"][0])
    assert "fp16 err" in format_table(result)
    assert last_stage_summary(result, reference_mode="fp16")["bf16"] > 1


@pytest.mark.slow
def test_report_runs_the_modes_compiled(tiny_net):
    """`--compile`: the modes run through torch.compile (one graph per mode) and keep their precision; the fp32
    reference stays eager. Through Dynamo and AOTAutograd (`aot_eager`): inductor's CPU code generation costs over a
    minute here; inductor's compiled modes are tested on GPUs (tests/precision/test_gpu_modes.py)."""
    net = tiny_net(seed=2)
    ect = ECTConfig(q=4, stage_nimg=100, P_mean=0.0, P_std=1.0, c=0.01)
    x0 = torch.randn(4, 4, 16, 16) * 0.5
    torch._dynamo.reset()
    result = report(net, x0, None, ect, stages=[3], t_grid=[2.0], modes=["bf16"], compiled=True, backend="aot_eager")
    (row,) = result["rows"]
    assert result["compiled"] and row["signal"] > 0
    eager = report(net, x0, None, ect, stages=[3], t_grid=[2.0], modes=["bf16"])["rows"][0]
    assert row["signal"] == eager["signal"]  # The same eager fp32 reference.
    # bf16 really ran (a compiled graph that ignored the mode would be at fp32 rounding, ~1e-6 of the signal):
    # the same order of error as eager.
    assert row["errors"]["bf16"] > 1e-4 * row["signal"]
    assert row["errors"]["bf16"] == pytest.approx(eager["errors"]["bf16"], rel=0.5)
