#!/usr/bin/env python3
"""Asynchronous checkpoints, measured (issue 22; run by benchmarks/checkpoint_async.sh, one process per leg).

Leg `save` (one process, one device): the shipped recipe on synthetic latents (eager: the save does not depend on
compilation), `--warmup` steps, `--baseline` timed steps without saving, then `--saves` asynchronous saves. For each
save: the time training stood still (`checkpointer.save` from a synchronised start to its return), the background
write, and every training step that ran while the writer was busy; the time those steps took beyond the baseline
step time is what the save cost training on top of the blocking part. A run that saves every I seconds loses
(blocking + extra) / I of its throughput (`lost_frac_at_*`: computed from these measurements, not a timed run).
Optionally one synchronous save of the same state (`--sync-save`), the old behaviour, on the same card.
Then one more save, and right after it returns, before any further step, a digest of the fp32 masters, EMAs and
Adam moments, for leg `resume`.

Leg `resume` (a new process): builds the trainer on the same run folder, which resumes from the newest checkpoint
(the last asynchronous save), reports the time to verify and to load it and the whole start-up, and compares the
digest of the restored state with leg `save`'s: `exact` is true only if every tensor matches bit for bit.

Every measurement is one JSON line on stdout (and appended to --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time

import torch

from ect_scale.config import load_config
from ect_scale.runtime import dist


def _sync() -> None:
    if torch.cuda.is_available() and dist.device().type == "cuda":
        torch.cuda.synchronize()


def _rss_gib() -> dict:
    """Resident and peak resident memory of this process (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 2**20
    return {"rss_gib": round(out.get("VmRSS", 0.0), 3), "peak_rss_gib": round(out.get("VmHWM", 0.0), 3)}


def _digest(t: torch.Tensor) -> str:
    """An exact fingerprint of a tensor's bits (position-weighted integer sum, mod 2^64, on its device)."""
    x = t.detach().reshape(-1)
    bits = x.view(torch.int32) if x.element_size() == 4 else x.view(torch.int16).to(torch.int32)
    acc = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, bits.numel(), 1 << 25):
        chunk = bits[start : start + (1 << 25)].to(torch.int64)
        w = torch.arange(start, start + chunk.numel(), device=x.device, dtype=torch.int64) % 1000003 + 1
        acc += (chunk * w).sum()
    return f"{t.numel()}:{int(acc)}"


def state_digests(trainer) -> dict:
    """Digests of this rank's fp32 masters, EMA shadows and Adam moments (in the optimizer's flat layout)."""
    flats = trainer.engine.master.flats()
    out = {f"master.{i}": _digest(f) for i, f in enumerate(flats)}
    for profile, shadows in trainer.ema.shadows.items():
        out.update({f"ema.{profile}.{i}": _digest(s) for i, s in enumerate(shadows)})
    opt = trainer.engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    for i, f in enumerate(flats):
        for key in ("exp_avg", "exp_avg_sq"):
            if f in inner.state and key in inner.state[f]:
                out[f"adam.{key}.{i}"] = _digest(inner.state[f][key])
    return out


def _emit(out_path: str, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out_path and dist.is_main():
        with open(out_path, "a") as f:
            f.write(line + "\n")


def _timed_step(trainer) -> float:
    t = time.perf_counter()
    trainer.train_step()
    _sync()
    return time.perf_counter() - t


def leg_save(cfg, args, base: dict) -> None:
    from ect_scale.checkpoint import Checkpointer, RunSpec
    from ect_scale.train.trainer import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    build_sec = time.perf_counter() - t0
    ckpt = trainer.checkpointer
    for _ in range(args.warmup):
        _timed_step(trainer)
    rss_before = _rss_gib()
    baseline = sorted(_timed_step(trainer) for _ in range(args.baseline))
    step_sec = sum(baseline) / len(baseline)
    _emit(
        args.out,
        {
            **base,
            "measure": "baseline",
            "build_s": round(build_sec, 2),
            "step_s_mean": step_sec,
            "step_s_median": baseline[len(baseline) // 2],
            "img_per_s": cfg.train.batch_size / step_sec,
            **rss_before,
        },
    )
    for i in range(1, args.saves + 1):
        _make_room(ckpt, f"save {i}")
        _sync()
        t = time.perf_counter()
        ckpt.save(trainer)  # Returns once the state is in host memory.
        blocking = time.perf_counter() - t
        during = []
        while ckpt.writer is not None and ckpt.writer.busy and not ckpt.writer.done():
            during.append(_timed_step(trainer))
        t = time.perf_counter()
        ckpt.wait()
        tail_wait = time.perf_counter() - t
        r = ckpt.reports[-1]
        extra = sum(during) - len(during) * step_sec
        lost = blocking + max(extra, 0.0)
        _emit(
            args.out,
            {
                **base,
                "measure": "async_save",
                "save": i,
                "ok": r.ok,
                "errors": r.errors,
                "nimg": r.nimg,
                "blocking_s": blocking,
                "stage_s": r.stage_sec,
                "deepspeed_stage_s": r.ds_sec,
                "trainer_state_stage_s": r.state_sec,
                "background_s": r.writer_sec,
                "write_s": r.write_sec,
                "commit_s": r.commit_sec,
                "checkpoint_gib": r.total_bytes / 2**30,
                "host_copy_gib": r.host_bytes / 2**30,
                "host_new_gib": r.host_new_bytes / 2**30,
                "host_buffers_gib": ckpt.stager.held_bytes / 2**30,
                "pinned": ckpt.stager.pin,
                "steps_during_write": len(during),
                "step_s_during_write_mean": sum(during) / len(during) if during else None,
                "extra_step_s": extra,
                "tail_wait_s": tail_wait,
                "lost_frac_at_120s": lost / 120,
                "lost_frac_at_300s": lost / 300,
                **_rss_gib(),
            },
        )
    if args.sync_save:
        _sync_save(trainer, cfg, args, base, Checkpointer, RunSpec)
    # The checkpoint leg `resume` starts from: one more save, and the digest of the state it holds, taken before
    # any further step (not timed: the digest would distort the measurements above).
    _make_room(ckpt, "the last save")
    ckpt.save(trainer)
    digests = {"nimg": trainer.state.nimg, "digests": state_digests(trainer)}
    ckpt.wait()
    with open(os.path.join(cfg.run_dir, "bench_digests.json"), "w") as f:
        json.dump(digests, f)
    ckpt.close()
    trainer.stream.close()
    trainer.monitor.close()


def _make_room(ckpt, what: str) -> None:
    """Keep the disk from overflowing on small machines (one EDM2-XL checkpoint is 38 GB, the 1-GPU hosts have
    64 GB): with less free space than 1.1 x the last checkpoint, remove every complete one before the next save
    (said in the output; the resume leg only needs the last save)."""
    if not ckpt.reports or not ckpt.dest.is_local:
        return
    need = 1.1 * ckpt.reports[-1].total_bytes
    if shutil.disk_usage(ckpt.dest.root).free >= need:
        return
    for tag in [t for t in ckpt.dest.tags() if ckpt.dest.is_complete(t)]:
        ckpt.dest.remove_checkpoint(tag)
        print(f"checkpoint_async: removed {tag} to make room on the disk for {what}", flush=True)


def _sync_save(trainer, cfg, args, base: dict, Checkpointer, RunSpec) -> None:
    """One synchronous save of the same state into another folder (the behaviour before asynchronous saves)."""
    ccfg = dataclasses.replace(cfg.checkpoint, async_save=False, dir=os.path.join(cfg.run_dir, "sync_checkpoints"))
    _make_room(trainer.checkpointer, "the synchronous save")
    free = shutil.disk_usage(cfg.run_dir).free
    need = 1.1 * trainer.checkpointer.reports[-1].total_bytes
    if free < need:
        _emit(
            args.out,
            {**base, "measure": "sync_save", "skipped": f"{free / 2**30:.1f} GiB free, need {need / 2**30:.1f}"},
        )
        return
    sync = Checkpointer(ccfg, cfg.run_dir, RunSpec.of(cfg), say=trainer.monitor.print)
    _sync()
    t = time.perf_counter()
    ok = sync.save(trainer)
    blocking = time.perf_counter() - t
    r = sync.reports[-1]
    _emit(
        args.out,
        {
            **base,
            "measure": "sync_save",
            "ok": ok,
            "blocking_s": blocking,
            "write_s": r.write_sec,
            "commit_s": r.commit_sec,
            "checkpoint_gib": r.total_bytes / 2**30,
        },
    )
    shutil.rmtree(ccfg.dir, ignore_errors=True)


def leg_resume(cfg, args, base: dict) -> None:
    from ect_scale.train.trainer import Trainer

    with open(os.path.join(cfg.run_dir, "bench_digests.json")) as f:
        saved = json.load(f)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    start_sec = time.perf_counter() - t0
    ckpt = trainer.checkpointer
    now = state_digests(trainer)
    differ = sorted(k for k in saved["digests"] if now.get(k) != saved["digests"][k])
    _emit(
        args.out,
        {
            **base,
            "measure": "resume",
            "resumed_nimg": ckpt.resumed_nimg,
            "saved_nimg": saved["nimg"],
            "startup_s": start_sec,
            "verify_s": ckpt.plan_sec,
            "load_s": ckpt.load_sec,
            "checkpoint_gib": ckpt.plan.marker.total_bytes / 2**30 if ckpt.plan else None,
            "tensors_compared": len(saved["digests"]),
            "differ": differ[:10],
            "exact": ckpt.resumed_nimg == saved["nimg"] and not differ and len(saved["digests"]) > 0,
            **_rss_gib(),
        },
    )
    trainer.stream.close()
    trainer.monitor.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("leg", choices=["save", "resume"])
    ap.add_argument("--config", required=True)
    ap.add_argument("--name", required=True, help="label of this configuration in the JSON lines")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--baseline", type=int, default=10)
    ap.add_argument("--saves", type=int, default=2)
    ap.add_argument("--sync-save", action="store_true")
    ap.add_argument("--out", default="")
    args, overrides = ap.parse_known_args()
    cfg = load_config(args.config, overrides)
    base = {
        "name": args.name,
        "preset": cfg.network.preset,
        "precision": cfg.engine.precision,
        "batch_gpu": cfg.train.batch_gpu,
        "ema_profiles": len(cfg.ema.stds) + (cfg.ema.beta is not None),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "async_save": cfg.checkpoint.async_save,
    }
    (leg_save if args.leg == "save" else leg_resume)(cfg, args, base)


if __name__ == "__main__":
    main()
