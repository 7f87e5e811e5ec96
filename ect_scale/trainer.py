"""The ECT training loop: DeepSpeed engine, streamed data, EMAs, monitoring, checkpoints, preemption.

Everything counts images seen (`nimg`): the ECT stage, the learning rate, the EMA decay, and every interval. One
optimizer step consumes `train.batch_size` images: `accumulation_rounds` micro-batches of `train.batch_gpu` on each
of the world's ranks. Randomness (t, noise, dropout masks, latent samples) is drawn from a generator seeded by
(seed, rank, nimg, round), so a resumed run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional

import torch

from ect_scale import dist
from ect_scale.config import Config, dump_config, to_dict
from ect_scale.ect import build_objective, learning_rate, nominal_ratio, stage_at, step_generator
from ect_scale.ema import EMATracker
from ect_scale.engine import Engine, setup_compile_cache
from ect_scale.monitor import Monitor, StepStats, peak_flops, summary_lines
from ect_scale.netfile import check_compatible, load_network_file, save_network_file
from ect_scale.networks import build_network, forced_weight_norm_
from ect_scale.networks.flops import model_stats
from ect_scale.precision_control import PrecisionControl, precision_text
from ect_scale.prefetch import DevicePrefetcher
from ect_scale.procs import arm_exit_watchdog


@dataclass
class TrainState:
    nimg: int = 0                 # Images seen (all ranks).
    steps: int = 0                # Optimizer steps attempted.
    skipped_steps: int = 0        # Steps skipped because a loss or the gradient norm was not finite.
    nonfinite_targets: int = 0    # Target-pass samples dropped for being non-finite.
    elapsed_sec: float = 0.0      # Training wall time across resumes.
    loss_scaler: dict = field(default_factory=dict)  # fp16 loss-scaler state ({} without fp16).

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, type(getattr(self, k))(v))


def start_network(cfg: Config) -> tuple[torch.nn.Module, dict, dict]:
    """The network to tune: the `init:` file (the pretrained EDM2 EMA) or a random EDM2 init, with forced weight
    normalisation applied once (a published EMA's rows are not unit-norm; `traps.md` 1). Returns the network,
    its fp32 state and the init file's metadata."""
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
        dist.init(cfg.engine.backend)
        self.device = dist.device()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.run_dir = cfg.run_dir
        self._setup_run_dir()
        self._compile_cache = setup_compile_cache(cfg)
        net, fp32_state, self.init_meta = start_network(cfg)
        self.checkpointer = self._build_checkpointer()
        overrides = self.checkpointer.engine_overrides() if self.checkpointer is not None else None
        self.engine = Engine(cfg, net, fp32_state, ds_overrides=overrides)
        self.module = self.engine.module
        self.module.train()
        zero3 = cfg.engine.zero_stage == 3 and self.world_size > 1
        self.objective = build_objective(cfg.ect, reduce_any=dist.any_true if zero3 else None)
        self.ema = EMATracker(cfg.ema, self.engine.master)
        self.stream = DevicePrefetcher(stream if stream is not None else self._build_stream(), self.device)
        self.encoder = self.stream.encoder
        self.state = TrainState()
        self.batch_size = cfg.train.batch_size
        self.stop_requested = False  # Set by a signal on this rank ...
        self.stop_all = False        # ... and agreed on by all ranks at the step boundary.
        self.last_scalars: dict[str, float] = {}     # The last status interval's statistics (all ranks).
        self._exported_at: Optional[int] = None     # Images seen at the last EMA export.
        self._install_signal_handlers()
        self.stats = StepStats(self.device, cfg.logging.loss_buckets, cfg.ect.P_mean, cfg.ect.P_std)
        self.flops_per_img = model_stats(cfg.network)["train_step_flops"]
        self.peak = peak_flops(self.device)
        resumed = self.checkpointer.resume(self) if self.checkpointer is not None else False
        if self.engine.scaler is not None and self.state.loss_scaler:
            self.engine.scaler.load_state_dict(self.state.loss_scaler)
        self.precision = PrecisionControl(cfg, self.engine, self._compile_cache)
        self.monitor = Monitor(self.run_dir, cfg, cfg.train.total_nimg, self.state.nimg)
        if self.checkpointer is not None:
            self.checkpointer.say = self.monitor.print
        self._announce(resumed)
        self._data_iter: Iterator = iter(self.stream)
        self.precision.say = self.monitor.print

    # ------------------------------------------------------------------ setup
    def _setup_run_dir(self) -> None:
        if dist.is_main():
            os.makedirs(self.run_dir, exist_ok=True)
            dump_config(self.cfg, os.path.join(self.run_dir, "config.yaml"))
        dist.barrier()

    def _build_stream(self):
        from ect_scale.data import build_train_stream

        stream = build_train_stream(self.cfg.data, batch_gpu=self.cfg.train.batch_gpu, rank=self.rank,
                                    world_size=self.world_size, seed=self.cfg.train.seed)
        if getattr(stream, "manifest", None) is not None:
            stream.manifest.check_fits(self.cfg.network)
        return stream

    def _build_checkpointer(self):
        if not self.cfg.checkpoint.enabled:
            return None
        from ect_scale.checkpoint import Checkpointer

        return Checkpointer(self.cfg, self.run_dir)

    def _install_signal_handlers(self) -> None:
        """SIGTERM / SIGUSR1 (SLURM preemption, `scancel --signal`): checkpoint at the next step boundary, exit."""
        def request_stop(signum, frame):
            self.stop_requested = True

        try:
            signal.signal(signal.SIGTERM, request_stop)
            signal.signal(signal.SIGUSR1, request_stop)
        except ValueError:  # Not the main thread (e.g. embedded use): signals stay with the host program.
            pass

    def _announce(self, resumed: bool) -> None:
        c = self.cfg
        rows = [("run_dir", self.run_dir), ("network", f"{c.network.preset or 'custom'} "
                f"({sum(math.prod(s) for s in self.engine.param_shapes.values()) / 1e6:.1f}M params, "
                f"{c.network.compute_dtype})"),
                ("init", c.init or "random (EDM2 init)"),
                ("objective", "diffusion (EDM2 loss, Eq. 21)" if c.ect.objective == "diffusion" else
                 f"ECT q={c.ect.q:g} stage_nimg={c.ect.stage_nimg:,} c={c.ect.c:g} weighting={c.ect.weighting}"),
                ("batch", f"{c.train.batch_size} = {c.train.batch_gpu} x {self.engine.rounds} rounds x {self.world_size} ranks"),
                ("engine", f"ZeRO-{c.engine.zero_stage} on {self.device.type}, precision {precision_text(c.engine)}"
                 + (f", compiled ({c.engine.compile_mode})" if c.engine.compile else "")),
                ("optimizer", f"Adam lr={c.optim.lr:g} betas={tuple(c.optim.betas)} decay_nimg={c.optim.decay_nimg:,}"),
                ("ema", ", ".join(self.ema.profiles)), ("data", data_description(c.data)),
                ("duration", f"{c.train.total_nimg:,} images"),
                ("start", f"resumed at {self.state.nimg:,} images" if resumed else "fresh start")]
        self.monitor.config_table(rows)

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainState:
        cfg = self.cfg
        slice_end = self.state.nimg + cfg.train.slice_nimg if cfg.train.slice_nimg else None
        t_start = session_start = last_status = time.time()
        self.session_start_nimg = self.state.nimg
        try:
            while self.state.nimg < cfg.train.total_nimg:
                before = self.state.nimg
                self.train_step()
                after = self.state.nimg
                self.state.elapsed_sec += time.time() - t_start
                t_start = time.time()
                if _crossed(before, after, cfg.train.status_nimg) or after >= cfg.train.total_nimg:
                    self.report(time.time() - last_status)
                    last_status = time.time()
                if cfg.ema.export_nimg and _crossed(before, after, cfg.ema.export_nimg):
                    self.export_emas()
                if cfg.eval.interval_nimg and _crossed(before, after, cfg.eval.interval_nimg):
                    self.evaluate()
                stop = self.stop_all or (slice_end is not None and slice_end <= after < cfg.train.total_nimg)
                if self.checkpointer is not None and (stop or self.checkpointer.due(before, after)):
                    self.save_checkpoint()
                if stop:
                    self.monitor.print(f"Stopping at {after:,} images (preemption signal or slice end); "
                                       "re-run the same command to resume.")
                    break
            else:
                if self.checkpointer is not None and not self.checkpointer.saved_at(self.state.nimg):
                    self.save_checkpoint()
                if self._exported_at != self.state.nimg:  # Not yet exported here (periodically or with a checkpoint).
                    self.export_emas()
            self.monitor.print(*run_summary(self, time.time() - session_start))
        finally:
            arm_exit_watchdog()  # A shutdown that hangs (data workers, TensorBoard, ...) shows its stacks.
            self.monitor.close()
            self.stream.close()
        return self.state

    def save_checkpoint(self) -> bool:
        """A checkpoint (collective), then the EMA exports if they go with checkpoints (`ema.export_nimg: 0`;
        after the commit, so an export cannot spoil it)."""
        ok = self.checkpointer.save(self)
        if self.cfg.ema.export_nimg == 0:
            self.export_emas()
        return ok

    def train_step(self) -> None:
        """One optimizer step over `batch_size` images (all ranks, all accumulation rounds).

        The only host synchronisation is the step/skip decision inside the engine (DeepSpeed reads the gradient
        norm there anyway); the non-finite-loss and stop flags ride along with it."""
        cfg, eng = self.cfg, self.engine
        nimg = self.state.nimg
        lr = learning_rate(nimg, cfg.optim.lr, cfg.optim.decay_nimg, cfg.optim.rampup_nimg)
        self.precision.before_step(nimg, self._probe)
        t0 = time.time()
        if cfg.engine.compile and cfg.engine.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # New iteration: earlier CUDA-graph outputs may be reused.
        bad = torch.zeros((), dtype=torch.float32, device=self.device)
        result = None
        for rnd in range(eng.rounds):
            t_data = time.time()
            raw, labels = next(self._data_iter)  # Already on the device (DevicePrefetcher).
            self.stats.data_sec += time.time() - t_data
            gen = step_generator(cfg.train.seed, self.rank, nimg, self.device, stream=rnd)
            t_gen = step_generator(cfg.train.seed, self.rank, nimg, "cpu", stream=1_000_000 + rnd)
            x0 = self.encoder.encode(raw, gen)
            masks = self.module.sample_dropout_masks(x0.shape[0], gen, device=self.device,
                                                     dtype=self.module.compute_dtype)
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
        if eng.scaler is not None:
            self.state.loss_scaler = eng.scaler.state_dict()
        if result.applied:
            self.ema.update(self.state.nimg, self.batch_size)
        else:
            self.state.skipped_steps += 1
            why = (f"fp16 gradient overflow ({eng.last_scale_note})" if eng.last_scale_note
                   else "non-finite loss or gradient on some rank")
            self.monitor.print(f"Skipped the step at {nimg:,} images: {why} ({self.state.skipped_steps} skipped so far).")
        self.precision.after_step(time.time() - t0)
        if result.applied and result.grad_norm is not None:
            self.stats.grad_norm_sum = self.stats.grad_norm_sum + result.grad_norm
            self.stats.grad_norm_count += 1
        self.stats.step_sec += time.time() - t0
        self.stats.images += self.batch_size

    def _probe(self):
        """(encoder, raw, labels) of one micro-batch for measurements, leaving the training stream untouched."""
        if not hasattr(self, "_probe_batch"):
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
        if cfg.ect.objective != "diffusion":  # The diffusion teacher has no stages.
            scalars.update({
                "ECT/stage": float(stage_at(max(nimg - self.batch_size, 0), cfg.ect)),
                "ECT/ratio": nominal_ratio(max(nimg - self.batch_size, 0), cfg.ect),
                "ECT/dt_over_t": 1 - nominal_ratio(max(nimg - self.batch_size, 0), cfg.ect)})
        scalars.update({
            "Optim/lr": learning_rate(max(nimg - self.batch_size, 0), cfg.optim.lr, cfg.optim.decay_nimg,
                                      cfg.optim.rampup_nimg),
            "Grad/norm": float(s.grad_norm_sum) / s.grad_norm_count if s.grad_norm_count else float("nan"),
            "Throughput/img_per_sec": img_per_sec,
            "Throughput/img_per_sec_per_gpu": img_per_sec / self.world_size,
            "Timing/sec_per_kimg": wall_sec / max(s.images / 1000, 1e-9),
            "Timing/data_wait_frac": s.data_sec / max(s.step_sec, 1e-9),
            "Progress/kimg": nimg / 1000,
            "Progress/skipped_steps": float(self.state.skipped_steps),
        })
        scalars.update(self.precision.scalars())
        if self.engine.scaler is not None:
            scalars["Precision/loss_scale"] = self.engine.scaler.scale
        if self.peak:
            scalars["Throughput/mfu"] = img_per_sec * self.flops_per_img / (self.peak * self.world_size)
        if self.device.type == "cuda":
            peak = torch.tensor([torch.cuda.max_memory_allocated(self.device) / 2**30], device=self.device)
            scalars["Resources/peak_gpu_mem_gb"] = float(dist.all_reduce_(peak, "max"))
        counters = self.stream.counters()  # Per rank: sum over ranks.
        if counters:
            totals = dist.all_reduce_(torch.tensor([float(v) for v in counters.values()], device=self.device))
            scalars.update({f"Data/{k}": float(v) for k, v in zip(counters, totals.tolist())})
        self.monitor.log(nimg, scalars)
        self.last_scalars = scalars
        s.reset()

    def ema_nets_state(self, profile: str) -> dict[str, torch.Tensor]:
        return self.ema.full_state(profile, self.module, self.engine.param_shapes)

    def export_emas(self) -> list[str]:
        """Write each EMA as a world-size-independent network file under <run_dir>/ema (collective), plus sample
        grids of the last profile (rank 0; `logging.sample_grids`)."""
        paths = []
        self._exported_at = self.state.nimg
        kimg = self.state.nimg // 1000
        dtype = torch.float16 if self.cfg.ema.export_dtype == "float16" else torch.float32
        for i, profile in enumerate(self.ema.profiles):
            state = self.ema_nets_state(profile)
            path = os.path.join(self.run_dir, "ema", f"ema-{kimg:07d}-{profile}.safetensors")
            if dist.is_main():
                meta = {"source": "ect_scale", "nimg": self.state.nimg, "ema": profile,
                        "encoder": self.encoder.describe(), "config": to_dict(self.cfg.ect)}
                save_network_file(path, state, self.cfg.network, meta=meta, dtype=dtype)
                if i == len(self.ema.profiles) - 1:
                    self.write_sample_grids(profile, state)
            paths.append(path)
        dist.barrier()
        return paths

    def write_sample_grids(self, profile: str, state: dict) -> None:
        """PNG grids in <run_dir>/samples and TensorBoard images `Samples/<sampler>/<profile>` (rank 0)."""
        from ect_scale.networks.precond import Precond
        from ect_scale.samples import can_decode, sample_grids, save_png

        num = self.cfg.logging.sample_grid
        if num <= 0:
            return
        reason = can_decode(self.encoder)
        if reason is not None:
            if not getattr(self, "_grid_warned", False):
                self.monitor.print(f"Sample grids off: {reason}. Set data.vae to a local SD-VAE directory.")
                self._grid_warned = True
            return
        net = Precond(self.cfg.network)
        net.load_state_dict(state)
        kimg = self.state.nimg // 1000
        folder = os.path.join(self.run_dir, "samples")
        self.monitor.print(f"samples: drawing {num} samples of EMA {profile} for the grids in {folder} ...")
        t0 = time.time()
        for name, grid in sample_grids(net, self.encoder, self.cfg.ect, num=num, device=self.device).items():
            if grid.shape[0] != 3:  # The encoder did not decode to RGB (e.g. a test encoder): nothing to show.
                continue
            save_png(grid, os.path.join(folder, f"{name}-{kimg:07d}-{profile}.png"))
            self.monitor.add_images(f"Samples/{name}/{profile}", grid.unsqueeze(0), self.state.nimg)
        self.monitor.print(f"samples: done in {time.time() - t0:.1f} s")

    def evaluate(self) -> dict[str, float]:
        """In-loop FID of each EMA at the configured step counts (all ranks share the work)."""
        from ect_scale.eval import InLoopEvaluator
        from ect_scale.networks.precond import Precond

        if not hasattr(self, "_evaluator"):
            self._evaluator = InLoopEvaluator(self.cfg.eval, self.cfg.ect, self.encoder, self.device)
        results = {}
        for profile in self.ema.profiles:
            net = Precond(self.cfg.network).to(self.device)
            net.load_state_dict(self.ema_nets_state(profile))
            results.update(self._evaluator.run({profile: net.eval()}, self.state.nimg))
            for name, grid in (getattr(self._evaluator, "last_grids", None) or {}).items():
                self.monitor.add_images(name, grid if grid.ndim == 4 else grid.unsqueeze(0), self.state.nimg)
            del net
        self.monitor.log(self.state.nimg, results)  # Rank 0: TensorBoard + stats.jsonl on the kimg axis.
        return results


def data_description(data) -> str:
    """The config table's data row: the manifest URL, or what synthetic data stands in for it."""
    if data.kind == "synthetic":
        return (f"synthetic ({data.synthetic_encoder}, {data.synthetic_resolution}px, "
                f"{data.synthetic_label_dim} classes)")
    return data.url


def run_summary(trainer: Trainer, session_sec: float) -> list[str]:
    """The end-of-run lines (rank 0 prints them): images, time, speed, skips, and where the results are."""
    cfg, run_dir, state = trainer.cfg, trainer.run_dir, trainer.state
    shards = trainer.last_scalars.get("Data/corrupt_shards_skipped")
    places = [("EMAs", os.path.join(run_dir, "ema") + f"  ({', '.join(trainer.ema.profiles)})")]
    if cfg.logging.sample_grid > 0:
        places.append(("samples", os.path.join(run_dir, "samples")))
    if cfg.logging.tensorboard:
        places.append(("TensorBoard", f"tensorboard --logdir {os.path.join(run_dir, 'tensorboard')}"))
    if trainer.checkpointer is not None:
        places.append(("checkpoints", trainer.checkpointer.dest.url))
    return summary_lines(nimg=state.nimg, total_nimg=cfg.train.total_nimg,
                         session_nimg=state.nimg - trainer.session_start_nimg, session_sec=session_sec,
                         elapsed_sec=state.elapsed_sec, skipped_steps=state.skipped_steps,
                         shards_skipped=None if shards is None else int(shards), places=places)


def _crossed(before: int, after: int, interval: int) -> bool:
    """True when [before, after) crosses a multiple of `interval` images."""
    return interval > 0 and after // interval > before // interval


def main(cfg: Config) -> TrainState:
    """Entry point used by `launchers/train.py`."""
    trainer = Trainer(cfg)
    return trainer.run()
