"""The ECT training loop: DeepSpeed engine, streamed data, EMAs, monitoring, checkpoints, preemption.

Everything counts images seen (`nimg`): the ECT stage, the learning rate, the EMA decay, and every interval. One
optimizer step consumes `train.batch_size` images: `accumulation_rounds` micro-batches of `train.batch_gpu` on each
of the world's ranks. Randomness (t, noise, dropout masks, latent samples) is drawn from a generator seeded by
(seed, rank, nimg, round), so a resumed run continues exactly like an uninterrupted one.

The loop reads like EDM2's: build the parts, resume, then step and run the periodic tasks (status, EMA export,
evaluation, checkpoint), each due on its own `Interval` of images.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from typing import Iterator, Optional

import torch

from ect_scale.checkpoint import Checkpointer, RunSpec
from ect_scale.checkpoint.collective import on_main
from ect_scale.config import DISTILL_OBJECTIVES, Config, dump_config
from ect_scale.ect import build_objective, learning_rate, nominal_ratio, stage_at, step_generator
from ect_scale.engine.ema import EMATracker
from ect_scale.engine.group import init_process_group
from ect_scale.engine.zero import Engine
from ect_scale.networks import build_network, forced_weight_norm_
from ect_scale.networks.flops import model_stats
from ect_scale.networks.netfile import check_compatible, load_network_file
from ect_scale.precision.control import PrecisionControl
from ect_scale.runtime import dist, entry
from ect_scale.runtime.errors import UserError
from ect_scale.runtime.intervals import Interval
from ect_scale.runtime.procs import arm_exit_watchdog
from ect_scale.runtime.rundir import RunFolder
from ect_scale.runtime.watchdog import Watchdog
from ect_scale.train.compile_cache import setup_compile_cache
from ect_scale.train.compute import ComputeMeter, flops_per_image, init_compute, peak_flops
from ect_scale.train.monitor import Monitor, StepStats
from ect_scale.train.outputs import EMAOutputs
from ect_scale.train.prefetch import DevicePrefetcher
from ect_scale.train.state import TrainState
from ect_scale.train.summary import config_rows, param_count, run_summary
from ect_scale.train.teacher import Distillation, check_frozen_files, target_profile


def start_network(cfg: Config) -> tuple[torch.nn.Module, dict, dict]:
    """The network to tune: the `init:` file (the pretrained EDM2 EMA) or a random EDM2 init, with forced weight
    normalisation applied once: a published EMA averages normalised weights, so its rows are not unit-norm
    (EDM2 Sec. 2.3; NVlabs/edm2 `training/networks_edm2.py`, MPConv). Returns the network, its fp32 state and the
    init file's metadata."""
    meta: dict = {}
    if cfg.init:
        keep = {k: getattr(cfg.network, k) for k in ("dropout", "dropout_res", "compute_dtype", "attention")}
        net, meta = load_network_file(cfg.init, overrides=keep)
        check_compatible(net.config, cfg.network, cfg.init)
    else:
        torch.manual_seed(cfg.train.seed)
        net = build_network(cfg.network)
    forced_weight_norm_(net)
    state = {n: p.detach().to(torch.float32).clone() for n, p in net.named_parameters()}
    return net, state, meta


class Trainer:
    """Owns the run: call `run()` on every rank."""

    def __init__(self, cfg: Config, stream=None):
        self.cfg = cfg
        init_process_group(cfg.engine.backend)
        self.device = dist.device()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        check_frozen_files(cfg, self.world_size)  # A teacher that cannot serve: one line, before any GPU work.
        self.run_dir = cfg.run_dir
        self.watchdog = Watchdog(cfg.train.hang_timeout_s, self.rank, os.path.join(self.run_dir, "logs"))
        self.folder = self._own_run_dir()  # Before anything is written to the run folder.
        self.monitor = Monitor(
            self.run_dir, cfg.logging, cfg.train.total_nimg, ect_stages=cfg.ect.objective in ("ect", "ecd")
        )
        compile_cache = setup_compile_cache(cfg.engine, self.run_dir)
        net, fp32_state, self.init_meta = start_network(cfg)
        self.checkpointer = (
            Checkpointer(cfg.checkpoint, self.run_dir, RunSpec.of(cfg), say=self.monitor.print)
            if cfg.checkpoint.enabled
            else None
        )
        overrides = self.checkpointer.engine_overrides() if self.checkpointer is not None else None
        self.engine = Engine(net, cfg.engine, cfg.optim, cfg.train, fp32_state, ds_overrides=overrides)
        self.module = self.engine.module
        self.module.train()
        zero3 = cfg.engine.zero_stage == 3 and self.world_size > 1
        internal = [target_profile(cfg.distill.target_ema)] if cfg.ect.objective == "cd" else []
        self.ema = EMATracker(cfg.ema, self.engine.master, internal=internal)  # CD: theta- is an internal EMA.
        self.distill = (
            Distillation(cfg, self.engine, self.ema, self.device, self.world_size)
            if cfg.ect.objective in DISTILL_OBJECTIVES
            else None
        )
        self.objective = build_objective(
            cfg.ect,
            reduce_any=dist.any_true if zero3 else None,
            distill=cfg.distill,
            nets=self.distill.nets() if self.distill is not None else None,
        )
        self.stream = DevicePrefetcher(stream if stream is not None else self._build_stream(), self.device)
        self.encoder = self.stream.encoder
        self.state = TrainState(scaler=self.engine.scaler)
        self.batch_size = cfg.train.batch_size
        self.stats = StepStats(self.device, cfg.logging.loss_buckets, cfg.ect.P_mean, cfg.ect.P_std)
        self.status_every = Interval(cfg.train.status_nimg)
        fwd_flops = {"online": model_stats(cfg.network)["fwd_flops"]}
        if self.distill is not None:  # The teacher (guide, theta-) counted with their own FLOPs.
            fwd_flops.update(self.distill.fwd_flops(fwd_flops["online"]))
        self.compute = ComputeMeter(flops_per_image(self.objective.flop_passes(), fwd_flops), self.device.type)
        self.init_compute = init_compute(self.init_meta, fwd_flops["online"])  # Reported alongside, never added.
        if self.distill is not None:
            self.init_compute.update(self.distill.pretraining_compute(fwd_flops))
        self.outputs = EMAOutputs(
            cfg, self.run_dir, self.ema, self.engine, self.encoder, self.monitor, compute_record=self.compute_record
        )
        self.precision = PrecisionControl(
            cfg.engine, cfg.ect, self.engine, say=self.monitor.print, compile_cache=compile_cache
        )
        self.peak = peak_flops(self.device)
        self.stop_requested = False  # Set by a signal on this rank ...
        self.stop_all = False  # ... and agreed on by all ranks at the step boundary.
        self.last_scalars: dict[str, float] = {}  # The last status interval's statistics (all ranks).
        self._probe_batch: Optional[tuple] = None  # A micro-batch kept for precision measurements.
        self._install_signal_handlers()
        resumed = self.checkpointer.resume(self) if self.checkpointer is not None else False
        self._record_config()  # Every check has passed (folder, data, init file, checkpoint compatibility).
        self.session_start_nimg = self.state.nimg
        self.monitor.start(self.state.nimg)
        rows = config_rows(
            cfg,
            params=param_count(self.engine.param_shapes),
            rounds=self.engine.rounds,
            world_size=self.world_size,
            device_type=self.device.type,
            ema_profiles=self.ema.exported,
            resumed_nimg=self.state.nimg if resumed else None,
        )
        if self.distill is not None:
            at = [key for key, _ in rows].index("objective")
            rows[at:at] = self.distill.rows()
        self.monitor.config_table(rows)
        if resumed:
            self.outputs.after_resume(self.state.nimg, self.batch_size)
        self._data_iter: Iterator = iter(self.stream)

    # ------------------------------------------------------------------ setup
    def _own_run_dir(self) -> RunFolder:
        """Rank 0 locks the run folder (and a checkpoint.dir outside it); another live run's lock stops every rank
        with one line naming it. `DONE` is removed until this start finishes (runtime/rundir.py)."""
        ckpt = self.cfg.checkpoint
        separate = ckpt.enabled and ckpt.dir and os.path.abspath(ckpt.dir) != os.path.abspath(self.run_dir)
        fs = None
        if separate and ckpt.dir.startswith(("s3://", "s3a://")):
            from ect_scale.data.storage import StorageOptions, filesystem

            fs = filesystem(ckpt.dir, StorageOptions().resolved())[0]
        folder = RunFolder(
            self.run_dir,
            ckpt.dir if separate else None,
            on_lost=self._folder_lost,
            checkpoint_fs=fs,
            outage_window_s=ckpt.outage_window_s,  # Taking an object store's lock rides out an outage.
        )

        def acquire() -> list[str]:
            notes = folder.acquire()
            folder.clear_done()
            return notes

        for note in on_main(acquire):
            dist.print0(note)
        return folder

    @staticmethod
    def _folder_lost(message: str) -> None:
        """Another run took this run's folder over (this one could not renew its lock): stop at once, saving
        nothing there."""
        entry.abort(UserError(f"{message}; stopped without saving", "make sure only one run uses the folder"), 2)

    def _record_config(self) -> None:
        """config.yaml and configs/config-<start time>.yaml (rank 0), once nothing can refuse this start."""
        if dist.is_main():
            self.folder.record_config(dump_config(self.cfg))
        dist.barrier()

    def _mark_done(self) -> None:
        """`<run_dir>/DONE` (rank 0) once the run has reached its end with the final checkpoint complete."""
        if self.checkpointer is not None and not self.checkpointer.saved_at(self.state.nimg):
            return
        if dist.is_main():
            latest = self.checkpointer.latest_complete if self.checkpointer is not None else None
            self.folder.mark_done({"nimg": self.state.nimg, "checkpoint": latest})

    def _build_stream(self):
        from ect_scale.data import build_train_stream

        stream = build_train_stream(
            self.cfg.data,
            batch_gpu=self.cfg.train.batch_gpu,
            rank=self.rank,
            world_size=self.world_size,
            seed=self.cfg.train.seed,
        )
        if getattr(stream, "manifest", None) is not None:
            stream.manifest.check_fits(self.cfg.network)
        return stream

    def _install_signal_handlers(self) -> None:
        """SIGTERM / SIGUSR1 (SLURM preemption, `scancel --signal`): checkpoint at the next step boundary, exit."""

        def request_stop(signum, frame):
            self.stop_requested = True

        try:
            signal.signal(signal.SIGTERM, request_stop)
            signal.signal(signal.SIGUSR1, request_stop)
        except ValueError:  # Not the main thread (e.g. embedded use): signals stay with the host program.
            pass

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainState:
        cfg = self.cfg
        total = cfg.train.total_nimg
        slice_end = self.state.nimg + cfg.train.slice_nimg if cfg.train.slice_nimg else None
        t_start = session_start = last_status = time.time()
        finished = False
        self.watchdog.start()  # Hangs from here on: data, step, status, export, eval, checkpoint.
        try:
            while self.state.nimg < total:
                before = self.state.nimg
                self.train_step()
                after = self.state.nimg
                now = time.time()
                self.state.elapsed_sec += now - t_start
                self.state.device_sec += (now - t_start) * self.world_size
                t_start = now
                if self.status_every.due(before, after) or after >= total:
                    self.watchdog.at("status")
                    self.report(time.time() - last_status)
                    last_status = time.time()
                if self.outputs.every.due(before, after):
                    self.watchdog.at("export")
                    self.outputs.export(after)
                if self.outputs.evaluator_every.due(before, after):
                    self.watchdog.at("eval")
                    self.outputs.evaluate(after, {**self.compute_record().scalars(), **self.init_compute})
                stop = self.stop_all or (slice_end is not None and slice_end <= after < total)
                if self.checkpointer is not None and (stop or self.checkpointer.every.due(before, after)):
                    self.watchdog.at("checkpoint")
                    self.save_checkpoint()
                if stop:
                    if self.checkpointer is not None:
                        self.checkpointer.wait()  # The background writer commits the stop's checkpoint first.
                        self.checkpointer.require_saved(after, "the checkpoint at the stop")
                    self.monitor.print(
                        f"Stopping at {after:,} images (preemption signal or slice end); "
                        "re-run the same command to resume."
                    )
                    break
                if self.checkpointer is not None:
                    self.checkpointer.poll()
            else:
                self.watchdog.at("checkpoint")
                if self.checkpointer is not None:
                    self.checkpointer.wait()
                    if not self.checkpointer.saved_at(self.state.nimg):
                        self.save_checkpoint()
                        self.checkpointer.wait()
                if self.outputs.exported_at != self.state.nimg:  # Not yet exported here.
                    self.outputs.export(self.state.nimg)
                if self.checkpointer is not None:  # A failed final save is no finished run (no DONE, exit 2).
                    self.checkpointer.require_saved(self.state.nimg, "the final checkpoint")
                self._mark_done()
            self.monitor.print(*run_summary(self, time.time() - session_start))
            finished = True
        finally:
            self.watchdog.stop()
            if self.checkpointer is not None:  # A failing run abandons a save in flight (its peers may be gone).
                self.checkpointer.close(wait=finished)
            self.folder.release()  # After the writer: no write into the folder once another run may own it.
            arm_exit_watchdog()  # A shutdown that hangs (data workers, TensorBoard, ...) shows its stacks.
            self.monitor.close()
            self.stream.close()
        return self.state

    def save_checkpoint(self) -> bool:
        """A checkpoint (collective), then the EMA exports if they go with checkpoints (`ema.export_nimg: 0`; after
        the state is captured, so an export cannot spoil it; a resume writes an export that a kill prevented)."""
        ok = self.checkpointer.save(self)
        if self.cfg.ema.export_nimg == 0:
            self.outputs.export(self.state.nimg)
        return ok

    def train_step(self) -> None:
        """One optimizer step over `batch_size` images (all ranks, all accumulation rounds).

        The only host synchronisation is the step/skip decision inside the engine (DeepSpeed reads the gradient
        norm there anyway); the non-finite-loss and stop flags ride along with it."""
        cfg, eng = self.cfg, self.engine
        nimg = self.state.nimg
        lr = learning_rate(nimg, cfg.optim.lr, cfg.optim.decay_nimg, cfg.optim.rampup_nimg)
        self.watchdog.at("step")
        self.precision.before_step(nimg, self._probe)
        t0 = time.time()
        if self.distill is not None:
            self.distill.before_step(eng.mode)  # Frozen networks follow the precision mode; CD gathers theta-.
        if cfg.engine.compile and cfg.engine.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # New iteration: earlier CUDA-graph outputs may be reused.
        bad = torch.zeros((), dtype=torch.float32, device=self.device)
        result = None
        for rnd in range(eng.rounds):
            t_data = time.time()
            self.watchdog.at("data")
            raw, labels = next(self._data_iter)  # Already on the device (DevicePrefetcher).
            self.watchdog.at("step")
            self.stats.data_sec += time.time() - t_data
            gen = step_generator(cfg.train.seed, self.rank, nimg, self.device, stream=rnd)
            t_gen = step_generator(cfg.train.seed, self.rank, nimg, "cpu", stream=1_000_000 + rnd)
            x0 = self.encoder.encode(raw, gen)
            masks = self.module.sample_dropout_masks(
                x0.shape[0], gen, device=self.device, dtype=self.module.compute_dtype
            )
            out = self.objective(eng, x0, labels, nimg, gen, masks, t_generator=t_gen)
            loss = out.loss.mean()
            bad = torch.maximum(bad, (~torch.isfinite(loss.detach())).float())
            self.stats.add_micro(out.loss, out.t, out.nonfinite_targets)
            flags = None
            if rnd == eng.rounds - 1:
                stop = torch.full((), float(self.stop_requested), device=self.device)
                flags = dist.all_reduce_(torch.stack([bad, stop]), "max")
            result = eng.micro_step(loss, lr, flags=flags)
        self.state.steps += 1
        self.state.nimg = nimg + self.batch_size
        self.stop_all = bool(eng.last_flags and eng.last_flags[1] > 0)
        if result.applied:
            self.ema.update(self.state.nimg, self.batch_size)
        else:
            self.state.skipped_steps += 1
            why = (
                f"fp16 gradient overflow ({eng.last_scale_note})"
                if eng.last_scale_note
                else "non-finite loss or gradient on some rank"
            )
            self.monitor.print(
                f"Skipped the step at {nimg:,} images: {why} ({self.state.skipped_steps} skipped so far)."
            )
        self.precision.after_step(time.time() - t0)
        if result.applied and result.grad_norm is not None:
            self.stats.grad_norm_sum = self.stats.grad_norm_sum + result.grad_norm
            self.stats.grad_norm_count += 1
        self.stats.step_sec += time.time() - t0
        self.stats.images += self.batch_size

    def compute_record(self):
        """The training compute spent so far (`train.compute.ComputeRecord`)."""
        return self.compute.record(self.state.nimg, self.state.elapsed_sec, self.state.device_sec)

    def _probe(self):
        """(encoder, raw, labels) of one micro-batch for measurements, leaving the training stream untouched."""
        if self._probe_batch is None:
            self._probe_batch = next(self._data_iter)
            self._data_iter = itertools.chain([self._probe_batch], self._data_iter)
        return (self.encoder, *self._probe_batch)

    # ------------------------------------------------------------------ periodic work
    def report(self, wall_sec: float) -> None:
        """Reduce the interval's statistics across ranks and log them (collective)."""
        cfg, s = self.cfg, self.stats
        nimg = self.state.nimg
        scalars = s.reduce()
        self.state.nonfinite_targets += int(scalars["Loss/nonfinite_targets"])
        img_per_sec = s.images / max(wall_sec, 1e-9)
        if cfg.ect.objective in ("ect", "ecd"):  # The diffusion teacher and CD have no ECT stages.
            scalars.update(
                {
                    "ECT/stage": float(stage_at(max(nimg - self.batch_size, 0), cfg.ect)),
                    "ECT/ratio": nominal_ratio(max(nimg - self.batch_size, 0), cfg.ect),
                    "ECT/dt_over_t": 1 - nominal_ratio(max(nimg - self.batch_size, 0), cfg.ect),
                }
            )
        scalars.update(
            {
                "Optim/lr": learning_rate(
                    max(nimg - self.batch_size, 0), cfg.optim.lr, cfg.optim.decay_nimg, cfg.optim.rampup_nimg
                ),
                "Grad/norm": float(s.grad_norm_sum) / s.grad_norm_count if s.grad_norm_count else float("nan"),
                "Throughput/img_per_sec": img_per_sec,
                "Throughput/img_per_sec_per_gpu": img_per_sec / self.world_size,
                "Timing/sec_per_kimg": wall_sec / max(s.images / 1000, 1e-9),
                "Timing/data_wait_frac": s.data_sec / max(s.step_sec, 1e-9),
                "Progress/kimg": nimg / 1000,
                "Progress/skipped_steps": float(self.state.skipped_steps),
            }
        )
        scalars.update(self.precision.scalars())
        if self.engine.scaler is not None:
            scalars["Precision/loss_scale"] = self.engine.scaler.scale
        scalars.update(self.compute_record().scalars())
        scalars.update(self.init_compute)
        if self.peak:
            scalars["Throughput/mfu"] = img_per_sec * self.compute.flops_per_image / (self.peak * self.world_size)
        if self.device.type == "cuda":
            peak = torch.tensor([torch.cuda.max_memory_allocated(self.device) / 2**30], device=self.device)
            scalars["Resources/peak_gpu_mem_gb"] = float(dist.all_reduce_(peak, "max"))
        counters = {f"Data/{k}": float(v) for k, v in self.stream.counters().items()}  # Per rank.
        if self.checkpointer is not None:
            counters["Checkpoint/outage_sec"] = self.checkpointer.dest.clock.lost_sec()
        if counters:  # Counts add up over ranks; outage seconds are the most any rank lost.
            values = torch.tensor(list(counters.values()), device=self.device)
            total, most = dist.all_reduce_(values.clone()), dist.all_reduce_(values.clone(), "max")
            scalars.update({k: float((most if k.endswith("_sec") else total)[i]) for i, k in enumerate(counters)})
        self.monitor.log(nimg, scalars)
        self.last_scalars = scalars
        s.reset()


def main(cfg: Config) -> TrainState:
    """Entry point used by `launchers/train.py`."""
    trainer = Trainer(cfg)
    return trainer.run()
