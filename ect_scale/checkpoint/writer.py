"""Writing a captured save and committing it: the part of a checkpoint that runs while training goes on.

A `SaveJob` holds what one rank captured at the step boundary (its files, with tensors copied to host memory).
`SaveRunner.run(job)` is collective over the writer's own gloo group (never the training group):

  1. rank 0 removes a leftover folder of the same name (an interrupted save, or a damaged checkpoint that the run
     did not resume from), marker first; a barrier;
  2. every rank writes its files: in place on a local/shared filesystem, or into its node-local staging folder
     and uploaded through `Destination` (which checks each stored size);
  3. every rank checks the size of each file on disk (the CRC32 is computed from the bytes as they are written),
     and the ranks exchange what they wrote and their errors;
  4. if every rank succeeded, rank 0 checks every file at the destination with its size (this catches a
     `checkpoint.dir` that is not shared by all nodes), writes COMPLETE (rename on POSIX, one PUT on object
     stores), then `latest`, then applies retention; otherwise rank 0 removes the folder.

Object-store operations ride out outages inside `Destination` (`checkpoint.outage_window_s`); one past the window
fails the save and is marked in its report (`outage`), on every rank, so that the checkpointer stops the run.

Nothing before step 4 touches the latest complete checkpoint, so a crash anywhere (the writer, the trainer, the
node) leaves it the latest. `BackgroundWriter` runs one job at a time in a daemon thread; the big writes and the
CRC32s release the GIL, so the training thread keeps running. Resume verifies every file against the CRC32s.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ect_scale.checkpoint.collective import all_gather_object, barrier, broadcast_object
from ect_scale.checkpoint.files import FileWrite, WriteLog, write_file
from ect_scale.checkpoint.layout import LATEST, MARKER, CheckpointError, FileRecord, Marker, nimg_of, retained
from ect_scale.checkpoint.storage import Destination
from ect_scale.config import CheckpointConfig
from ect_scale.runtime import dist
from ect_scale.runtime.outage import StoreOutageError


@dataclass
class SaveReport:
    tag: str
    ok: bool
    nimg: int = 0
    background: bool = False  # Written by the background writer while training went on.
    total_bytes: int = 0  # All ranks' files.
    rank_bytes: int = 0  # This rank's files.
    wait_sec: float = 0.0  # Blocking: waiting for the previous save to finish before this one could start.
    stage_sec: float = 0.0  # Blocking: capturing the state and copying its tensors to host memory.
    ds_sec: float = 0.0  # ... of which DeepSpeed's save_checkpoint (captured) on this rank.
    state_sec: float = 0.0  # ... of which the trainer state (EMA + master shards, RNG, stream) on this rank.
    host_bytes: int = 0  # Tensor bytes copied to host memory on this rank.
    host_new_bytes: int = 0  # ... of which into newly allocated (and, on GPUs, page-locked) buffers.
    write_sec: float = 0.0  # Background (or, for a synchronous save, blocking): writing this rank's files (+CRC32).
    upload_sec: float = 0.0  # ... uploading them to object storage.
    commit_sec: float = 0.0  # ... exchanging records, checking the destination, COMPLETE, `latest`, retention.
    writer_sec: float = 0.0  # Wall time of the whole write-and-commit (steps 1-4).
    total_sec: float = 0.0  # From the start of the save to its commit.
    outage_sec: float = 0.0  # Of the write-and-commit, spent waiting for an object store that was out (this rank).
    latest: Optional[str] = None  # The latest complete checkpoint after this save (display form).
    errors: dict[int, str] = field(default_factory=dict)
    outage: Optional[tuple[str, Optional[str]]] = None  # (what, fix) of a store outage past its window: stop the run.

    @property
    def blocking_sec(self) -> float:
        """Seconds training stood still for this save."""
        return self.stage_sec + (0.0 if self.background else self.writer_sec)


@dataclass
class SaveJob:
    """What one rank captured for one checkpoint."""

    tag: str
    nimg: int
    writes: list[FileWrite]
    log: WriteLog  # Errors met while capturing (a job with an error writes nothing but still votes).
    report: SaveReport
    started: float  # time.time() at the start of the save.
    release: Callable[[], None] = lambda: None  # Hands the host buffers back once the files are written.


class SaveRunner:
    """Writes and commits jobs (see the module docstring). Created on every rank."""

    def __init__(
        self,
        dest: Destination,
        staging: str,
        ccfg: CheckpointConfig,
        group: Optional[Any],
        log: Callable[[str], None],
    ):
        self.dest, self.staging, self.ccfg, self.group, self.log = dest, staging, ccfg, group, log
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.latest: Optional[str] = None  # Newest complete tag this process committed or resumed from.

    def folder(self, tag: str) -> str:
        """Where this rank writes `tag`: the destination itself, or its node-local staging folder."""
        if self.dest.is_local:
            return self.dest.path(tag)
        return os.path.join(self.staging, "save", f"rank{self.rank}", tag)

    def run(self, job: SaveJob) -> SaveReport:
        report, log = job.report, job.log
        t0, lost0 = time.time(), self.dest.clock.lost_sec()
        records: list[FileRecord] = []
        folder = self.folder(job.tag)
        try:  # Every rank must reach the exchange below, whatever happens here.
            folder = self._prepare(job.tag, log, report)
            records = self._write(job, folder, log, report)
            if log.error is None and not self.dest.is_local:
                self._upload(job.tag, folder, records, log, report)
        except Exception as e:  # noqa: BLE001
            log.fail(f"writing {job.tag}", e)
            records = []
        finally:
            job.release()
        t = time.time()
        report.rank_bytes = sum(r.size for r in records)
        gathered = all_gather_object((log.error, [r.__dict__ for r in records], report.outage), self.group)
        report.errors = {r: e for r, (e, _, _) in enumerate(gathered) if e}
        report.outage = next((o for _, _, o in gathered if o), None)  # An outage on any rank stops every rank.
        files = {d["path"]: FileRecord(**d) for _, recs, _ in gathered for d in recs}
        if not report.errors:
            marker = Marker(job.tag, job.nimg, self.world_size, files, time.time() - job.started)
            report.errors = self._commit(marker, report)
        report.ok = not report.errors
        if not report.ok and report.outage is None:  # (An outage: no second wait for the store; no marker anyway.)
            self._discard(job.tag)
        report.total_bytes = sum(f.size for f in files.values())
        report.latest = self._latest_display(job.tag if report.ok else None)
        if not self.dest.is_local:
            shutil.rmtree(folder, ignore_errors=True)
        report.commit_sec = time.time() - t
        report.writer_sec = time.time() - t0
        report.total_sec = time.time() - job.started
        report.outage_sec = self.dest.clock.lost_sec() - lost0
        return report

    # ------------------------------------------------------------------ steps
    def _prepare(self, tag: str, log: WriteLog, report: SaveReport) -> str:
        """Rank 0 removes a stale folder of the same name; every rank creates its write folder."""
        if dist.is_main():
            try:
                if tag in self.dest.tags():
                    complete = self.dest.is_complete(tag)
                    self.dest.remove_checkpoint(tag)
                    if complete:
                        self.log(
                            f"replaced {self.dest.display(tag)}, left by an earlier attempt that was not resumed from"
                        )
            except Exception as e:  # noqa: BLE001
                log.fail(f"removing the stale {self.dest.display(tag)}", e)
                _note_outage(report, e)
        barrier(self.group)
        folder = self.folder(tag)
        try:
            if not self.dest.is_local:
                shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            log.fail(f"creating {folder}", e)
        return folder

    def _write(self, job: SaveJob, folder: str, log: WriteLog, report: SaveReport) -> list[FileRecord]:
        """This rank's files, with the size and CRC32 of the bytes written (computed on the way, not re-read)."""
        t = time.time()
        out = []
        for fw in job.writes:
            if log.error is not None:
                break
            try:
                path, size, crc = write_file(folder, fw)
                log.paths.append(path)
                if os.path.getsize(path) != size:
                    raise OSError(f"{path} has {os.path.getsize(path)} bytes on disk, {size} were written")
                out.append(FileRecord(fw.rel, size, crc, self.rank))
            except Exception as e:  # noqa: BLE001 - any write failure (ENOSPC, EFBIG, EIO) is reported collectively
                log.fail(f"writing {os.path.join(folder, fw.rel)}", e)
        report.write_sec = time.time() - t
        return out if log.error is None else []

    def _upload(self, tag: str, folder: str, records: list[FileRecord], log: WriteLog, report: SaveReport) -> None:
        t = time.time()
        for rec in records:
            try:
                self.dest.upload(os.path.join(folder, rec.path), tag, rec.path)
            except Exception as e:  # noqa: BLE001 - network and permission errors alike
                log.fail(f"uploading {rec.path} to {self.dest.display(tag)}", e)
                _note_outage(report, e)
                break
        report.upload_sec = time.time() - t

    def _commit(self, marker: Marker, report: SaveReport) -> dict[int, str]:
        """Rank 0: check every file at the destination, write COMPLETE, update `latest`, prune (collective)."""
        error = None
        if dist.is_main():
            try:
                self._check_destination(marker)
                self.dest.write_text_atomic(marker.to_text(), marker.tag, MARKER)
            except Exception as e:  # noqa: BLE001
                error = f"committing: {type(e).__name__}: {e}"
                _note_outage(report, e)
            if error is None:
                self._after_commit(marker.tag)
        error, report.outage = broadcast_object((error, report.outage), self.group)
        if error is None:
            self.latest = marker.tag
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

    def _discard(self, tag: str) -> None:
        """A failed save: rank 0 removes its folder (it has no marker; the next save prunes it otherwise)."""
        if dist.is_main():
            try:
                self.dest.remove_checkpoint(tag)
            except Exception:  # noqa: BLE001
                pass
        barrier(self.group)

    def _latest_display(self, committed: Optional[str]) -> str:
        """The latest complete checkpoint for messages: the one just committed, else the newest this process
        committed or resumed from (no listing: the store may be out)."""
        latest = committed or self.latest
        return self.dest.display(latest) if latest else "none (a failed first save)"


def _note_outage(report: SaveReport, e: BaseException) -> None:
    """A store outage past `checkpoint.outage_window_s` stops the run (the save is failed, never retried)."""
    if isinstance(e, StoreOutageError) and report.outage is None:
        report.outage = (e.what, e.fix)


class BackgroundWriter:
    """Runs one job at a time in a daemon thread (a daemon, so that a crashing trainer is not held up by it: the
    interrupted save then has no COMPLETE marker and the previous checkpoint stays the latest)."""

    def __init__(self, run: Callable[[SaveJob], SaveReport]):
        self._run = run
        self._thread: Optional[threading.Thread] = None
        self._job: Optional[SaveJob] = None
        self._report: Optional[SaveReport] = None

    @property
    def busy(self) -> bool:
        return self._job is not None

    def done(self) -> bool:
        """A job was submitted and has finished (its report is ready for `wait`)."""
        return self._job is not None and not self._thread.is_alive()

    def submit(self, job: SaveJob) -> None:
        assert self._job is None, "one save at a time: wait() for the previous one first"
        self._job, self._report = job, None
        self._thread = threading.Thread(target=self._main, args=(job,), name="ect_scale-checkpoint-writer", daemon=True)
        self._thread.start()

    def _main(self, job: SaveJob) -> None:
        try:
            self._report = self._run(job)
        except BaseException as e:  # noqa: BLE001 - a crashed writer is a failed save, reported by wait()
            job.report.ok = False
            job.report.errors = {dist.get_rank(): f"background writer crashed: {type(e).__name__}: {e}"}
            self._report = job.report

    def wait(self) -> Optional[SaveReport]:
        """Block until the job in flight (if any) has finished; return its report and forget it."""
        if self._job is None:
            return None
        self._thread.join()
        report, self._job, self._thread = self._report, None, None
        return report
