"""The trainer's checkpointer: a save that blocks training only while the state is copied to host memory, an
atomic COMPLETE marker written by a background writer, retention, exact and elastic resume.

    ckpt = Checkpointer(cfg.checkpoint, run_dir, RunSpec.of(cfg), say=monitor.print)
    overrides = ckpt.engine_overrides()       # before the DeepSpeed engine exists: picks the checkpoint to resume
    engine = Engine(net, cfg.engine, cfg.optim, cfg.train, ds_overrides=overrides)
    ckpt.resume(parts)                        # restores everything; False for a fresh start
    if ckpt.every.due(nimg_before, nimg_after): ckpt.save(parts)
    ckpt.poll()                               # every step: report a background save that has finished
    ckpt.wait()                               # at the end, on a stop: the save in flight is committed (or failed)

`parts` is any `Checkpointable` (`parts.py`: engine, EMAs, data stream, counters, encoder); the trainer is one.

A save (collective) first waits for the previous one, then captures DeepSpeed's state dicts and the trainer state
with every tensor copied to host memory (`staging.py`; on GPUs pinned buffers kept between saves), and hands the
files to the background writer (`writer.py`: its own gloo group, never the training group), which writes them,
checks them and commits COMPLETE once every rank's files are in place. Training continues meanwhile. With
`checkpoint.async_save: false` (the `auto` choice on CPUs) the same steps run at once, on the training thread.

A save never damages the latest checkpoint. A failed save (full disk, lost connection) is reported on every rank,
its folder removed, and training continues; `checkpoint.max_consecutive_failures` failures in a row stop it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable, Optional

import torch

from ect_scale.checkpoint.collective import writer_group
from ect_scale.checkpoint.ds_io import capture_deepspeed, ds_version, load_deepspeed
from ect_scale.checkpoint.files import FileWrite, WriteLog
from ect_scale.checkpoint.layout import FORMAT, TRAINER_FILE, CheckpointError, RunSpec, rank_file, tag_for
from ect_scale.checkpoint.parts import Checkpointable
from ect_scale.checkpoint.restore import restore_state
from ect_scale.checkpoint.resume import ResumePlan, plan_resume
from ect_scale.checkpoint.shards import rank_state
from ect_scale.checkpoint.staging import HostStager
from ect_scale.checkpoint.storage import Destination, staging_root
from ect_scale.checkpoint.writer import BackgroundWriter, SaveJob, SaveReport, SaveRunner
from ect_scale.config import CheckpointConfig
from ect_scale.runtime import dist
from ect_scale.runtime.intervals import Interval
from ect_scale.runtime.outage import StoreOutageError

WAIT_NOTE_SEC = 0.5  # A save that waits longer than this for the previous one says so.


class Checkpointer:
    """Created on every rank; every public method except `saved_at` and `poll` is collective."""

    def __init__(self, ccfg: CheckpointConfig, run_dir: str, spec: RunSpec, say: Callable[[str], None] = dist.print0):
        self.ccfg, self.spec, self.say = ccfg, spec, say  # `say`: where save outcomes go (the trainer's monitor).
        self.every = Interval(ccfg.interval_nimg)  # Periodic saves; the trainer also saves on stop and at the end.
        self.dest = Destination(self.ccfg.dir or os.path.join(run_dir, "checkpoints"), ccfg.outage_window_s)
        self.staging = staging_root(self.ccfg.staging_dir, self.dest.url)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.plan: Optional[ResumePlan] = None
        self._planned = False
        self.plan_sec = self.load_sec = 0.0  # Resume: choosing and verifying the checkpoint; loading it.
        self.last_saved_nimg: Optional[int] = None  # Images seen at the newest save this process committed.
        self.resumed_nimg: Optional[int] = None
        self.failures = 0
        self.reports: list[SaveReport] = []  # Every finished save of this process, in order.
        self.outage: Optional[SaveReport] = None  # A save that met a store outage past its window.
        device = dist.device().type
        background = ccfg.use_async(device)
        self.stager = HostStager(copy_tensors=background, keep=True, pin=device == "cuda")
        group = writer_group() if background else None  # Collective: every rank builds its Checkpointer.
        self.runner = SaveRunner(self.dest, self.staging, ccfg, group, self.log)
        self.writer = BackgroundWriter(self.runner.run) if background else None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def log(msg: str) -> None:
        dist.print0(f"checkpoint: {msg}")

    # ------------------------------------------------------------------ resume
    def engine_overrides(self) -> Optional[dict]:
        """Pick the checkpoint to resume from (verify, download, convert); DeepSpeed settings its load needs."""
        t0 = time.time()
        self.plan = plan_resume(self.ccfg, self.spec, self.dest, self.staging, self.log)
        self.plan_sec = time.time() - t0
        self._planned = True
        if self.plan is not None and self.plan.universal:
            return {"checkpoint": {"load_universal": True}}
        return None

    def resume(self, parts: Checkpointable) -> bool:
        """Restore model, optimizer, EMAs, counters, data position and RNG from the planned checkpoint."""
        if not self._planned:
            self.engine_overrides()
        plan = self.plan
        if plan is None:
            return False
        t0 = time.time()
        ds = parts.engine.engine
        if plan.universal:
            ds._config.load_universal_checkpoint = True
        load_deepspeed(ds, plan.load_dir, plan.load_tag, plan.universal)
        notes = restore_state(parts, plan, self.rank, self.world_size)
        self.resumed_nimg = parts.state.nimg
        self.runner.latest = plan.tag
        secs = self.load_sec = time.time() - t0
        how = (
            "exact resume"
            if not plan.universal and plan.saved_world_size == self.world_size
            else (
                f"elastic: {plan.saved_world_size} -> {self.world_size} ranks through a universal checkpoint "
                f"(converted in {plan.convert_sec:.1f} s)"
                if plan.universal
                else f"{plan.saved_world_size} -> {self.world_size} ranks (ZeRO-0 state is replicated)"
            )
        )
        self.log(
            f"resumed from {self.dest.display(plan.tag)} at {parts.state.nimg:,} images ({how}; "
            f"{plan.marker.total_bytes / 2**20:.1f} MiB, verified in {self.plan_sec:.1f} s, loaded in {secs:.1f} s)"
        )
        for note in notes:
            self.log(note)
        dist.barrier()
        if dist.env_local_rank() == 0:  # Downloaded copies and universal conversions are needed only for the load.
            for sub in ("load", "universal"):
                shutil.rmtree(os.path.join(self.staging, sub), ignore_errors=True)
        return True

    # ------------------------------------------------------------------ schedule
    @property
    def latest_complete(self) -> Optional[str]:
        """Tag of the newest complete checkpoint this process committed or resumed from."""
        return self.runner.latest

    def saved_at(self, nimg: int) -> bool:
        """Whether a complete checkpoint at `nimg` exists already (committed or resumed from in this process)."""
        return nimg in (self.last_saved_nimg, self.resumed_nimg)

    # ------------------------------------------------------------------ save
    def save(self, parts: Checkpointable) -> bool:
        """Checkpoint the current state (collective). Asynchronous (`checkpoint.async_save`): returns once the state
        is copied to host memory, True; the outcome is reported when the background writer finishes. Synchronous:
        returns whether the save succeeded. Raises after `max_consecutive_failures` failed saves in a row."""
        t0 = time.time()
        waited = self.wait()
        nimg = parts.state.nimg
        tag = tag_for(nimg)
        if waited > WAIT_NOTE_SEC:
            self.log(f"waited {waited:.1f} s for the previous save to finish before saving {tag}")
        report = SaveReport(tag, ok=False, nimg=nimg, background=self.writer is not None, wait_sec=waited)
        job = self._capture(parts, tag, report, t0)
        if self.writer is None:
            self._record(self.runner.run(job))
            self._check_failures()
            return report.ok
        self.writer.submit(job)
        return True

    def poll(self) -> None:
        """Report a background save that has finished (not collective; never raises: `wait` does)."""
        if self.writer is not None and self.writer.done():
            self._record(self.writer.wait())

    def wait(self) -> float:
        """Wait until the save in flight (if any) is committed or has failed, and report it (collective: call it on
        all ranks at the same point). Returns the seconds waited; raises after too many failed saves in a row."""
        t = time.time()
        if self.writer is not None and self.writer.busy:
            self._record(self.writer.wait())
        self._check_failures()
        return time.time() - t

    def close(self, wait: bool = True) -> None:
        """Wait for the save in flight (unless the run is failing: then it is abandoned, uncommitted) and free the
        host buffers."""
        if wait:
            self.wait()
        if self.writer is None or not self.writer.busy:
            self.stager.close()

    def _capture(self, parts: Checkpointable, tag: str, report: SaveReport, started: float) -> SaveJob:
        """The blocking part: DeepSpeed's state dicts (collective) and this rank's trainer state, with every tensor
        copied to host memory (asynchronous saves) or referenced (synchronous ones, written before training
        resumes)."""
        log, stager = WriteLog(), self.stager
        t = time.time()
        stager.begin()
        folder = self.runner.folder(tag)
        client = {"ect_scale": {"nimg": parts.state.nimg, "train_state": parts.state.state_dict()}}
        writes: list[FileWrite] = []
        try:
            writes = capture_deepspeed(parts.engine.engine, folder, client, stager.stage, log)
            report.ds_sec = time.time() - t
            t = time.time()
            if log.error is None:
                try:
                    tensors, meta = rank_state(parts, self.rank, self.world_size)
                    writes.append(FileWrite(rank_file(self.rank), "safetensors", (stager.stage(tensors), meta)))
                    if self.rank == 0:
                        text = json.dumps(self._trainer_meta(parts, tag), indent=1)
                        writes.append(FileWrite(TRAINER_FILE, "text", text))
                except Exception as e:  # noqa: BLE001 - reported collectively
                    log.fail("copying the trainer state", e)
        finally:
            stager.finish()
        report.state_sec = time.time() - t
        report.stage_sec = time.time() - started - report.wait_sec
        report.host_bytes, report.host_new_bytes = stager.copied_bytes, stager.new_bytes
        return SaveJob(tag, parts.state.nimg, writes, log, report, started, release=stager.release)

    def _trainer_meta(self, parts: Checkpointable, tag: str) -> dict:
        spec = self.spec
        return {
            "format": FORMAT,
            "tag": tag,
            "nimg": parts.state.nimg,
            "train_state": parts.state.state_dict(),
            "world_size": self.world_size,
            "zero_stage": spec.zero_stage,
            "precision": spec.param_dtype,
            "deepspeed": ds_version(),
            "torch": torch.__version__,
            "immutable": spec.immutable,
            "ema_profiles": list(parts.ema.profiles),
            "ema_nimg": int(parts.ema.nimg),
            "param_shapes": {k: list(v) for k, v in parts.engine.param_shapes.items()},
            "network": spec.network,
            "ect": spec.ect,
            "encoder": parts.encoder.describe(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # ------------------------------------------------------------------ outcomes
    def _record(self, report: SaveReport) -> None:
        """Count and report a finished save (every rank; printed by rank 0)."""
        self.reports.append(report)
        if report.outage is not None:
            self.outage = report  # Stops the run at the next wait (every rank saw it).
            return
        if report.ok:
            self.failures = 0
            self.last_saved_nimg = report.nimg
            self.say(f"checkpoint: saved {self.dest.display(report.tag)} {describe(report)}")
            return
        self.failures += 1
        errors = "; ".join(f"rank {r}: {e}" for r, e in sorted(report.errors.items()))
        self.say(
            f"checkpoint: FAILED to save {report.tag} at {report.nimg:,} images ({errors}). Latest complete "
            f"checkpoint: {report.latest}. Failure {self.failures} of {self.ccfg.max_consecutive_failures} allowed "
            "in a row"
        )

    def require_saved(self, nimg: int, what: str) -> None:
        """Raise `CheckpointError` naming the latest complete checkpoint unless one at `nimg` is complete: a run
        whose final (or stop) save failed must not end as if it had finished."""
        if self.saved_at(nimg):
            return
        report = next((r for r in reversed(self.reports) if r.nimg == nimg), None)
        errors = "; ".join(f"rank {r}: {e}" for r, e in sorted(report.errors.items())) if report else "not saved"
        latest = self.dest.display(self.latest_complete) if self.latest_complete else "none"
        raise CheckpointError(
            f"{what} {tag_for(nimg)} at {nimg:,} images failed ({errors}); the latest complete checkpoint is {latest}",
            f"free space or check access at {self.dest.url}, then re-run the same command: it resumes from the "
            "latest complete checkpoint and trains on from there",
        )

    def _check_failures(self) -> None:
        if self.outage is not None:
            what, fix = self.outage.outage
            raise StoreOutageError(
                f"{what}; checkpoint {self.outage.tag} was not saved, the latest complete checkpoint is "
                f"{self.outage.latest}",
                fix,
            )
        if self.failures < self.ccfg.max_consecutive_failures:
            return
        report = self.reports[-1]
        errors = "; ".join(f"rank {r}: {e}" for r, e in sorted(report.errors.items()))
        raise CheckpointError(
            f"{self.failures} checkpoint saves in a row failed (last: {errors}); stopping training. The latest "
            f"complete checkpoint is {report.latest}. Fix: free space or check access at {self.dest.url}, then "
            "re-run the same command to resume"
        )


def describe(r: SaveReport) -> str:
    """Size and time breakdown of a successful save: what blocked training, and what ran in the background."""
    size = f"({r.total_bytes / 2**20:.1f} MiB, {r.rank_bytes / 2**20:.1f} MiB on rank 0)"
    stage = f"DeepSpeed {r.ds_sec:.2f} s, trainer state {r.state_sec:.2f} s"
    files = f"files + CRC32 {r.write_sec:.2f} s, upload {r.upload_sec:.2f} s, commit {r.commit_sec:.2f} s"
    if r.outage_sec:
        files += f"; {r.outage_sec:.1f} s of the save waiting for the store"
    if not r.background:
        return f"{size} in {r.total_sec:.2f} s, all blocking ({stage}, {files})"
    waited = f"waiting for the previous save {r.wait_sec:.2f} s, " if r.wait_sec > 0.005 else ""
    new = f"; {_size(r.host_new_bytes)} of host buffers allocated" if r.host_new_bytes else ""
    return (
        f"{size} in {r.total_sec:.2f} s: training blocked {r.blocking_sec + r.wait_sec:.2f} s ({waited}copy to "
        f"host memory {r.stage_sec:.2f} s: {stage}{new}), background {r.writer_sec:.2f} s ({files})"
    )


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
