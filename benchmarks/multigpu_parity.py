#!/usr/bin/env python3
"""Multi-GPU (NCCL) counterparts of the CPU parity tests: ZeRO 1/2/3 agree, forced weight norms hold on the
fp32 masters, and the sharded power EMA equals a reference computed from the consolidated weights.

    torchrun --nproc_per_node 2 benchmarks/multigpu_parity.py        (or deepspeed --num_gpus 2 ...)
Prints one JSON line on rank 0; exits non-zero if a check fails.
"""

import json
import sys

import torch

from ect_scale.engine.ema import power_beta
from ect_scale.engine.group import init_process_group
from ect_scale.engine.zero import Engine
from ect_scale.runtime import dist
from tests.engine.common import initial_net, micro_loss, tiny_cfg

STEPS = 4


def run_stage(stage: int, precision: str) -> dict:
    cfg = tiny_cfg(
        stage,
        precision,
        batch_size=4 * dist.get_world_size(),
        batch_gpu=2,
        **{"ema.stds": "[0.05]", "ema.beta": "null"},
    )
    from ect_scale.engine.ema import EMATracker

    engine = Engine(initial_net(cfg), cfg.engine, cfg.optim, cfg.train)
    engine.module.train()
    ema = EMATracker(cfg.ema, engine.master)
    ref_ema, losses = None, []
    rank = dist.get_rank()
    for step in range(STEPS):
        nimg = step * cfg.train.batch_size
        for rnd in range(engine.rounds):
            x_loss = micro_loss(
                engine, engine.module, cfg, rank, step, rnd, nimg, reduce_any=dist.any_true, device=dist.device()
            )
            losses.append(float(dist.all_reduce_(x_loss.detach().reshape(1).clone())) / dist.get_world_size())
            res = engine.micro_step(x_loss, lr=cfg.optim.lr)
        assert res.applied
        ema.update(nimg + cfg.train.batch_size, cfg.train.batch_size)
        full = engine.master.gather()
        beta = power_beta(0.05, nimg + cfg.train.batch_size, cfg.train.batch_size)
        ref_ema = full if ref_ema is None else {k: v.lerp(full[k], 1 - beta) for k, v in ref_ema.items()}
    ema_full = engine.master.gather(sources=ema.shadows["power-0.050"])
    ema_err = max(float((ema_full[k] - ref_ema[k]).abs().max()) for k in ref_ema)
    return {
        "state": engine.full_state(),
        "wn_err": engine.master.max_row_norm_error(),
        "ema_err": ema_err,
        "losses": losses,
        "lr": cfg.optim.lr,
    }


def main() -> int:
    init_process_group()
    # fp32 comparisons without TF32 (cuDNN allows it by default); Adam's ~lr-sized first steps amplify any noise.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name() if dist.device().type == "cuda" else "cpu"
    out = {"world_size": dist.get_world_size(), "device": name}
    runs = {f"zero{s}-{p}": run_stage(s, p) for p in ("fp32", "bf16") for s in (1, 2, 3)}
    ok = True
    for name, r in runs.items():
        out[f"{name}.wn_err"], out[f"{name}.ema_err"] = r["wn_err"], r["ema_err"]
        ok &= r["wn_err"] < 1e-3 and r["ema_err"] < 1e-6
    # Adam turns reduction-order noise in near-zero gradients into ~lr-sized moves of those few elements, so the
    # max difference is reported but not judged. A real fault (a missing all-reduce, a wrong shard) moves most
    # elements by ~lr and changes the losses: judge the fraction of elements off by > lr/10 and the losses.
    # bf16 ZeRO-3 keeps its gradient partitions in bf16 (ZeRO-1/2 accumulate in fp32 here), so about 1 % of the
    # elements take a different Adam step: hence the looser bf16 bound (a real fault gives > 50 %).
    for p, far_tol, loss_tol in (("fp32", 1e-3, 1e-4), ("bf16", 5e-2, 2e-2)):
        base = runs[f"zero1-{p}"]
        for s in (2, 3):
            other = runs[f"zero{s}-{p}"]
            diffs = torch.cat([(other["state"][k] - v).abs().flatten() for k, v in base["state"].items()])
            far = float((diffs > 0.1 * base["lr"]).float().mean())
            loss_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(other["losses"], base["losses"]))
            out[f"zero{s}_vs_zero1-{p}.max_diff"] = float(diffs.max())
            out[f"zero{s}_vs_zero1-{p}.frac_off_by_lr/10"] = far
            out[f"zero{s}_vs_zero1-{p}.max_loss_rel_diff"] = loss_rel
            ok &= far < far_tol and loss_rel < loss_tol
    out["ok"] = bool(ok)
    if dist.is_main():
        print(json.dumps(out), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
