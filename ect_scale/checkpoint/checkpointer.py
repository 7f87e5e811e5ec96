"""The trainer's checkpointer: collective save with an atomic COMPLETE marker, retention, exact and elastic resume.

    ckpt = Checkpointer(cfg.checkpoint, run_dir, RunSpec.of(cfg), say=monitor.print)
    overrides = ckpt.engine_overrides()       # before the DeepSpeed engine exists: picks the checkpoint to resume
    engine = Engine(net, cfg.engine, cfg.optim, cfg.train, ds_overrides=overrides)
    ckpt.resume(parts)                        # restores everything; False for a fresh start
    if ckpt.every.due(nimg_before, nimg_after): ckpt.save(parts)

`parts` is any `Checkpointable` (`parts.py`: engine, EMAs, data stream, counters, encoder); the trainer is one.

A save never damages the latest checkpoint: files go to a new folder (directly on a shared filesystem, or staged
locally and uploaded to object storage), every rank reports what it wrote, and only when all ranks succeeded
does rank 0 check the files at the destination and write COMPLETE. A failed save (full disk, lost connection)
is reported on every rank, its folder removed, and training continues; `checkpoint.max_consecutive_failures`
failures in a row stop it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ect_scale.checkpoint.collective import all_gather_object
from ect_scale.checkpoint.ds_io import WriteLog, ds_version, load_deepspeed, save_deepspeed
from ect_scale.checkpoint.layout import (
    FORMAT,
    LATEST,
    MARKER,
    TRAINER_FILE,
    CheckpointError,
    FileRecord,
    Marker,
    RunSpec,
    nimg_of,
    rank_file,
    retained,
    tag_for,
)
from ect_scale.checkpoint.parts import Checkpointable
from ect_scale.checkpoint.restore import restore_state
from ect_scale.checkpoint.resume import ResumePlan, plan_resume
from ect_scale.checkpoint.shards import write_rank_file
from ect_scale.checkpoint.storage import Destination, crc32_file, staging_root
from ect_scale.config import CheckpointConfig
from ect_scale.runtime import dist
from ect_scale.runtime.intervals import Interval
from ect_scale.runtime.outage import StoreOutageError


@dataclass
class SaveReport:
    tag: str
    ok: bool
    total_bytes: int = 0  # All ranks' files.
    rank_bytes: int = 0  # This rank's files.
    ds_sec: float = 0.0  # DeepSpeed's save_checkpoint on this rank.
    state_sec: float = 0.0  # Trainer state (EMA + master shards, RNG, stream) on this rank.
    upload_sec: float = 0.0  # Checksums and uploads on this rank.
    outage_sec: float = 0.0  # Of the save's time, spent waiting for an object store that was out (this rank).
    total_sec: float = 0.0  # Wall time of the whole collective save.
    errors: dict[int, str] = field(default_factory=dict)


class Checkpointer:
    """Created on every rank; every public method except `saved_at` is collective."""

    def __init__(self, ccfg: CheckpointConfig, run_dir: str, spec: RunSpec, say: Callable[[str], None] = dist.print0):
        self.ccfg, self.spec, self.say = ccfg, spec, say  # `say`: where save outcomes go (the trainer's monitor).
        self.every = Interval(ccfg.interval_nimg)  # Periodic saves; the trainer also saves on stop and at the end.
        self.dest = Destination(self.ccfg.dir or os.path.join(run_dir, "checkpoints"), ccfg.outage_window_s)
        self.staging = staging_root(self.ccfg.staging_dir, self.dest.url)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.plan: Optional[ResumePlan] = None
        self._planned = False
        self.last_saved_nimg: Optional[int] = None
        self.resumed_nimg: Optional[int] = None
        self.latest_complete: Optional[str] = None  # Tag of the newest complete checkpoint (resumed from or saved).
        self.failures = 0
        self.reports: list[SaveReport] = []

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def log(msg: str) -> None:
        dist.print0(f"checkpoint: {msg}")

    # ------------------------------------------------------------------ resume
    def engine_overrides(self) -> Optional[dict]:
        """Pick the checkpoint to resume from (verify, download, convert); DeepSpeed settings its load needs."""
        self.plan = plan_resume(self.ccfg, self.spec, self.dest, self.staging, self.log)
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
        self.latest_complete = plan.tag
        secs = time.time() - t0
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
            f"{plan.marker.total_bytes / 2**20:.1f} MiB, loaded in {secs:.1f} s)"
        )
        for note in notes:
            self.log(note)
        dist.barrier()
        if dist.env_local_rank() == 0:  # Downloaded copies and universal conversions are needed only for the load.
            for sub in ("load", "universal"):
                shutil.rmtree(os.path.join(self.staging, sub), ignore_errors=True)
        return True

    # ------------------------------------------------------------------ schedule
    def saved_at(self, nimg: int) -> bool:
        """Whether a complete checkpoint at `nimg` exists already (saved or resumed from in this process)."""
        return nimg in (self.last_saved_nimg, self.resumed_nimg)

    # ------------------------------------------------------------------ save
    def save(self, parts: Checkpointable) -> bool:
        """Write a checkpoint of the current state (collective). Returns False if the save failed (the previous
        checkpoint stays the latest); raises after `max_consecutive_failures` failures in a row."""
        t0, lost0 = time.time(), self.dest.clock.lost_sec()
        nimg = parts.state.nimg
        tag = tag_for(nimg)
        report = SaveReport(tag, ok=False)
        log, folder = self._prepare(tag)
        self._write(parts, folder, log, report)  # Collective (DeepSpeed): runs even after a local error.
        records = self._records(folder, log) if log.error is None else []
        if log.error is None and not self.dest.is_local:
            self._upload(tag, folder, records, log, report)
        report.rank_bytes = sum(r.size for r in records)
        gathered = all_gather_object((log.error, [r.__dict__ for r in records]))
        report.errors = {r: e for r, (e, _) in enumerate(gathered) if e}
        files = {d["path"]: FileRecord(**d) for _, recs in gathered for d in recs}
        if not report.errors:
            marker = Marker(tag, nimg, self.world_size, files, time.time() - t0)
            report.errors = self._commit(marker)
        report.ok = not report.errors
        report.total_bytes = sum(f.size for f in files.values())
        if not self.dest.is_local:
            shutil.rmtree(folder, ignore_errors=True)
        report.total_sec = time.time() - t0
        report.outage_sec = self.dest.clock.lost_sec() - lost0
        self.reports.append(report)
        self._conclude(nimg, report)
        return report.ok

    def _prepare(self, tag: str) -> tuple[WriteLog, str]:
        """Remove a stale folder of the same name (rank 0), create this rank's write folder."""

        def clear_stale():
            if tag in self.dest.tags():
                complete = self.dest.is_complete(tag)
                self.dest.remove_checkpoint(tag)
                if complete:
                    self.log(f"replaced {self.dest.display(tag)}, left by an earlier attempt that was not resumed from")

        log = WriteLog()
        if dist.is_main():
            try:
                clear_stale()
            except StoreOutageError as e:
                raise self._not_saved(tag, e) from e
            except Exception as e:  # noqa: BLE001
                log.fail(f"removing the stale {self.dest.display(tag)}", e)
        dist.barrier()
        folder = (
            self.dest.path(tag) if self.dest.is_local else os.path.join(self.staging, "save", f"rank{self.rank}", tag)
        )
        try:
            if not self.dest.is_local:
                shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            log.fail(f"creating {folder}", e)
        return log, folder

    def _write(self, parts: Checkpointable, folder: str, log: WriteLog, report: SaveReport) -> None:
        """DeepSpeed's files (collective; writes are skipped once `log` has an error), then this rank's own."""
        t = time.time()
        client = {"ect_scale": {"nimg": parts.state.nimg, "train_state": parts.state.state_dict()}}
        save_deepspeed(parts.engine.engine, folder, client, log)
        report.ds_sec = time.time() - t
        t = time.time()
        if log.error is None:
            path = os.path.join(folder, rank_file(self.rank))
            try:
                write_rank_file(path, parts, self.rank, self.world_size)
                log.paths.append(path)
            except Exception as e:  # noqa: BLE001 - a failed write is reported collectively
                log.fail(f"writing {path}", e)
        if log.error is None and self.rank == 0:
            path = os.path.join(folder, TRAINER_FILE)
            try:
                with open(path, "w") as f:
                    json.dump(self._trainer_meta(parts, tag_for(parts.state.nimg)), f, indent=1)
                log.paths.append(path)
            except Exception as e:  # noqa: BLE001
                log.fail(f"writing {path}", e)
        report.state_sec = time.time() - t

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

    def _records(self, folder: str, log: WriteLog) -> list[FileRecord]:
        out = []
        try:
            for p in log.paths:
                crc = crc32_file(p) if self.ccfg.checksum else None
                rel = os.path.relpath(p, folder).replace(os.sep, "/")
                out.append(FileRecord(rel, os.path.getsize(p), crc, self.rank))
        except OSError as e:
            log.fail("reading back the written files", e)
        return out

    def _upload(self, tag: str, folder: str, records: list[FileRecord], log: WriteLog, report: SaveReport) -> None:
        t = time.time()
        for rec in records:
            try:
                self.dest.upload(os.path.join(folder, rec.path), tag, rec.path)
            except StoreOutageError as e:
                raise self._not_saved(tag, e) from e
            except Exception as e:  # noqa: BLE001 - network and permission errors alike
                log.fail(f"uploading {rec.path} to {self.dest.display(tag)}", e)
                break
        report.upload_sec = time.time() - t

    def _commit(self, marker: Marker) -> dict[int, str]:
        """Rank 0: check every file at the destination, write COMPLETE, update `latest`, prune (collective)."""
        error = None
        if dist.is_main():
            try:
                self._check_destination(marker)
                self.dest.write_text_atomic(marker.to_text(), marker.tag, MARKER)
            except StoreOutageError as e:
                raise self._not_saved(marker.tag, e) from e
            except Exception as e:  # noqa: BLE001
                error = f"committing: {type(e).__name__}: {e}"
            if error is None:
                self._after_commit(marker.tag)
        error = dist.broadcast_object(error)
        return {0: error} if error else {}

    def _check_destination(self, marker: Marker) -> None:
        sizes = self.dest.sizes(marker.tag)
        for rel, rec in marker.files.items():
            size = sizes.get(rel)
            if size != rec.size:
                raise CheckpointError(
                    f"rank {rec.rank}'s file {rel} is {'missing' if size is None else f'{size} bytes'} at "
                    f"{self.dest.display(marker.tag)} (wrote {rec.size} bytes). Fix: checkpoint.dir must be a "
                    "filesystem shared by all nodes (or object storage, s3://...)"
                )

    def _after_commit(self, tag: str) -> None:
        """Rank 0, best effort: the `latest` pointer and retention (a failure here loses nothing)."""
        try:
            self.dest.write_text_atomic(tag + "\n", LATEST)
            tags = self.dest.tags()
            complete = {t: nimg_of(t) for t in tags if self.dest.is_complete(t)}
            keep = retained(list(complete.values()), self.ccfg.keep_last, self.ccfg.keep_every_nimg)
            for t in tags:
                if t != tag and (t not in complete or complete[t] not in keep):
                    self.dest.remove_checkpoint(t)
        except Exception as e:  # noqa: BLE001
            self.log(f"WARNING: retention after {tag} failed ({type(e).__name__}: {e}); old checkpoints remain")

    def _conclude(self, nimg: int, report: SaveReport) -> None:
        """Report the outcome; clean up after a failure; stop after too many failures in a row."""
        say = self.say
        if report.ok:
            self.failures = 0
            self.last_saved_nimg = nimg
            self.latest_complete = report.tag
            rest = max(0.0, report.total_sec - report.ds_sec - report.state_sec - report.upload_sec)  # All else.
            say(
                f"checkpoint: saved {self.dest.display(report.tag)} ({report.total_bytes / 2**20:.1f} MiB, "
                f"{report.rank_bytes / 2**20:.1f} MiB on rank 0) in {report.total_sec:.2f} s (DeepSpeed "
                f"{report.ds_sec:.2f} s, trainer state {report.state_sec:.2f} s, upload {report.upload_sec:.2f} s, "
                f"listing, checks and commit {rest:.2f} s"
                + (f"; {report.outage_sec:.1f} s of the save waiting for the store" if report.outage_sec else "")
                + ")"
            )
            return
        self.failures += 1
        if dist.is_main():
            try:
                self.dest.remove_checkpoint(report.tag)
            except Exception:  # noqa: BLE001 - the folder has no marker; the next save prunes it
                pass
        dist.barrier()
        errors = "; ".join(f"rank {r}: {e}" for r, e in sorted(report.errors.items()))
        latest = self._latest()
        say(
            f"checkpoint: FAILED to save {report.tag} at {nimg:,} images ({errors}). Latest complete checkpoint: "
            f"{latest}. Failure {self.failures} of {self.ccfg.max_consecutive_failures} allowed in a row"
        )
        if self.failures >= self.ccfg.max_consecutive_failures:
            raise CheckpointError(
                f"{self.failures} checkpoint saves in a row failed (last: {errors}); stopping "
                f"training. The latest complete checkpoint is {latest}. Fix: free space or check "
                f"access at {self.dest.url}, then re-run the same command to resume"
            )

    def _latest(self) -> str:
        """The newest complete checkpoint, as this run knows it (no listing: the store may be out)."""
        return self.dest.display(self.latest_complete) if self.latest_complete else "none (a failed first save)"

    def _not_saved(self, tag: str, error: StoreOutageError) -> StoreOutageError:
        """The store stayed out longer than checkpoint.outage_window_s during a save: stop the run (the failed
        folder has no COMPLETE marker and is ignored), naming the checkpoint a re-run resumes from."""
        return StoreOutageError(
            f"{error.what}; checkpoint {tag} was not saved, the latest complete checkpoint is {self._latest()}",
            error.fix,
        )
