"""Deterministic, resumable streaming of WebDataset shards into training (one `TrainStream` per rank).

Order (see `order.Layout`): per epoch a global shard permutation seeded by (seed, epoch), identical on every
rank, split by rank then by DataLoader worker; each worker reads its shards through webdataset's `gopen` (s3://
via `storage`) and `tar_file_iterator`, shuffles samples in a buffer seeded by (seed, epoch, rank, worker) and
yields exactly `batches_per_worker` batches per epoch. Every rank therefore yields `batches_per_epoch` batches,
and DataLoader's round-robin puts rank batch k on worker k % W. If corrupt shards leave a worker short, it
refills from a second pass over its own shards, so batch counts never diverge between ranks.

Resume: `state_dict()` holds (epoch, batch within epoch, layout). With the same layout each worker replays its
epoch stream and drops the batches it had produced (without decoding them): the batches after the resume are
exactly those an uninterrupted run would have seen. With another layout (world size, workers, batch size,
shuffle buffer, seed or shards) the position is mapped to the same fraction of the epoch; see docs/data.md.

Outages: a rank's workers share one `OutageClock` (in shared memory), so a store outage is logged once per rank when
it starts and once when it ends, and its length is counted (`counters()["outage_sec"]`). Reads wait where they
are (the position is never lost); past `data.outage_window_s` the run stops with `StoreOutageError`. Expected
failures raised in a worker (`UserError`s) reach the training process as the same exception, not as DataLoader's
multi-line re-raise (the worker's traceback is attached as a note, for the run's error log).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import traceback
from collections import Counter
from itertools import count, islice
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from ect_scale.data import storage
from ect_scale.data.manifest import LABEL_EXT, RAW_EXT, Manifest
from ect_scale.data.order import Layout, shuffled
from ect_scale.data.storage import StorageError, StorageOptions
from ect_scale.runtime.errors import UserError
from ect_scale.runtime.outage import OutageClock, StoreOutageError
from ect_scale.runtime.procs import exit_with_parent

log = logging.getLogger("ect_scale.data")
_WARN_FIRST, _WARN_EVERY = 10, 100
COUNTER_NAMES = ("corrupt_shards_skipped", "samples_skipped", "refill_passes", "read_retries")


class WorkerFailure:
    """What a worker yields instead of raising an expected failure (`UserError`): the exception and the worker's
    traceback text. The training process raises the exception itself (`TrainStream.__next__`)."""

    def __init__(self, error: BaseException, where: str):
        self.error, self.where = error, where


class ShardWorkerStream(IterableDataset):
    """What one DataLoader worker yields: `(raw, labels, meta)` batches, forever, from (start_epoch, start_batch)."""

    def __init__(
        self,
        manifest: Manifest,
        layout: Layout,
        rank: int,
        options: StorageOptions,
        start_epoch: int,
        start_batch: int,
        clock: Optional[OutageClock] = None,
    ):
        super().__init__()
        self.clock, self.canary = clock, manifest.url  # The manifest exists: a 404 for it too is an outage.
        self.urls = [manifest.shard_url(i) for i in range(len(manifest.shards))]
        self.sizes = [s.bytes for s in manifest.shards]
        self.raw_shape, self.raw_dtype = tuple(manifest.raw_shape), np.dtype(manifest.raw_dtype)
        self.layout, self.rank, self.options = layout, rank, options
        self.start_epoch, self.start_batch = start_epoch, start_batch
        self.owner_pid = os.getpid()  # The training process (workers are its children, or the forkserver's).

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        # Rotate worker roles so that the DataLoader's first worker serves the next batch (rank batch k -> k % W).
        worker = (physical + self.start_batch) % self.layout.workers
        storage.configure_process(self.options, self.clock, self.canary)
        counters = Counter({name: 0 for name in COUNTER_NAMES})
        self._retries0 = storage.COUNTERS["read_retries"]  # Per-process counter; report this stream's share.
        skip = self.layout.worker_batches_done(self.start_batch, worker)
        try:
            for epoch in count(self.start_epoch):
                yield from self._epoch(epoch, worker, skip, counters)
                skip = 0
        except UserError as e:
            if info is None:
                raise  # In the training process already (num_workers: 0).
            yield WorkerFailure(e, f"DataLoader worker {physical} of rank {self.rank}:\n{traceback.format_exc()}")

    def _epoch(self, epoch: int, worker: int, skip: int, counters: Counter) -> Iterator:
        shards = self.layout.worker_shards(epoch, self.rank, worker)
        samples = self._samples(epoch, worker, shards, counters)
        batch_gpu = self.layout.batch_gpu
        for index in range(self.layout.batches_per_worker):
            items = list(islice(samples, batch_gpu))
            if index < skip:
                continue  # Already consumed before the resume: read, but not decoded.
            raw = np.stack(
                [
                    np.frombuffer(b, self.raw_dtype, count=int(np.prod(self.raw_shape)), offset=off).reshape(
                        self.raw_shape
                    )
                    for _, b, off in items
                ]
            )
            labels = torch.tensor([label for label, _, _ in items], dtype=torch.int64)
            counters["read_retries"] = storage.COUNTERS["read_retries"] - self._retries0
            meta = {"epoch": epoch, "worker": worker, "index": index, **counters}
            yield torch.from_numpy(raw), labels, meta
        samples.close()  # The rest of the epoch's samples are dropped; close the open shard now.

    def _samples(self, epoch: int, worker: int, shards: list[int], counters: Counter) -> Iterator:
        """Shuffled samples of this worker's shards; further passes (refills) only if corrupt shards left it short."""
        bad: set[int] = set()
        for shard_pass in count():
            if shard_pass:
                counters["refill_passes"] += 1
            rng = self.layout.sample_rng(epoch, self.rank, worker, shard_pass)
            n = 0
            for item in shuffled(self._read(shards, counters, bad), self.layout.shuffle_buffer, rng):
                n += 1
                yield item
            if n == 0:
                raise UserError(
                    f"data: rank {self.rank} worker {worker}: none of its {len(shards)} shards in epoch "
                    f"{epoch} is readable (e.g. {self.urls[shards[0]]}); see the warnings above",
                    "check the shards (tools/make_shards.py --verify) and re-write the broken ones",
                )

    def _read(self, shards: list[int], counters: Counter, bad: set) -> Iterator[tuple[int, bytes, int]]:
        """(label, raw npy bytes, data offset) per sample; a shard that fails is skipped from that point on and
        added to `bad` (not re-read by refill passes of the same epoch)."""
        for shard in shards:
            if shard in bad:
                continue
            url = self.urls[shard]
            try:
                with gopen(url, "rb") as raw_stream:
                    stream = _CountingReader(raw_stream, url)
                    for key, files in group_by_key(tar_file_iterator(stream)):
                        item = self._parse(files)
                        if item is None:
                            counters["samples_skipped"] += 1
                            _warn(counters["samples_skipped"], f"data: skipping malformed sample {key} in {url}")
                            continue
                        yield item
                    stream.drain()  # tarfile accepts an archive cut at a header boundary; the size check does not.
                    if stream.nbytes != self.sizes[shard]:
                        raise OSError(
                            f"truncated or modified: {stream.nbytes} bytes, the manifest says {self.sizes[shard]}"
                        )
            except StoreOutageError:
                raise  # The store did not come back within data.outage_window_s: stop, do not skip.
            except StorageError as e:
                if e.kind in ("credentials", "unreachable"):
                    raise
                self._skip_shard(url, e, counters)
                bad.add(shard)
            except Exception as e:  # noqa: BLE001 - tar/IO errors of a broken shard must not stop training
                self._skip_shard(url, e, counters)
                bad.add(shard)

    @staticmethod
    def _skip_shard(url: str, error: BaseException, counters: Counter) -> None:
        counters["corrupt_shards_skipped"] += 1
        reason = str(error).replace(f" @ {url}", "")  # webdataset appends the stream (here: the URL) to tar errors.
        _warn(
            counters["corrupt_shards_skipped"],
            f"data: skipping the rest of shard {url} "
            f"({type(error).__name__}: {reason}); {counters['corrupt_shards_skipped']} shard(s) skipped so far",
        )

    def _parse(self, files: dict) -> Optional[tuple[int, bytes, int]]:
        if RAW_EXT not in files or LABEL_EXT not in files:
            return None
        try:
            label = int(files[LABEL_EXT])
            shape, dtype, offset = npy_header(files[RAW_EXT])
        except (ValueError, SyntaxError):
            return None
        if shape != self.raw_shape or dtype != self.raw_dtype:
            return None
        if len(files[RAW_EXT]) - offset != int(np.prod(shape)) * dtype.itemsize:
            return None
        return label, files[RAW_EXT], offset


class _CountingReader:
    """Counts the bytes read from a stream (to detect shards that end early); prints as the shard's URL."""

    def __init__(self, stream, url: str):
        self.stream, self.url, self.nbytes = stream, url, 0

    def __str__(self) -> str:
        return self.url

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.nbytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 16):
            pass


def group_by_key(files: Iterator[dict]) -> Iterator[tuple[str, dict]]:
    """Consecutive tar members `<key>.<ext>` -> (key, {ext: bytes}); an incomplete trailing sample is never yielded
    when the tar stream fails (the error propagates before the group is closed)."""
    key, group = None, {}
    for f in files:
        k, ext = base_plus_ext(f["fname"])
        if k is None:
            continue
        if k != key:
            if key is not None:
                yield key, group
            key, group = k, {}
        group[ext.lower()] = f["data"]
    if key is not None:
        yield key, group


def npy_header(blob: bytes) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data offset) of an .npy blob, reading only its header."""
    f = io.BytesIO(blob)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran:
        raise ValueError("Fortran-ordered arrays are not written by make_shards")
    return tuple(shape), np.dtype(dtype), f.tell()


def _warn(n: int, message: str) -> None:
    """Rate-limited warnings: the first few, then every 100th."""
    if n <= _WARN_FIRST or n % _WARN_EVERY == 0:
        log.warning(message)


def _worker_init(_: int) -> None:
    """Runs in every DataLoader worker: one thread, and exit with the parent (SIGKILL of the trainer included)."""
    torch.set_num_threads(1)
    owner = get_worker_info().dataset.owner_pid
    # A forkserver's child: the forkserver forks from its only thread, so a parent-death signal is safe. A direct
    # child of the trainer may have been started from a thread that ends earlier: parent watch only.
    exit_with_parent(pdeathsig=os.getppid() != owner)


def start_forkserver() -> None:
    """Start this process's forkserver (if not running) with the preloads that make it and its workers die with
    this process (`forkserver_init`); call it from the main thread, before the first DataLoader iterator."""
    multiprocessing.set_forkserver_preload(["ect_scale.data.forkserver_init", "ect_scale.data.loader"])
    multiprocessing.forkserver.ensure_running()


# ----------------------------------------------------------------------------
# The training process side.


class TrainStream:
    """Iterator of `(raw, labels)` micro-batches for one rank; see the module docstring for order and resume."""

    kind = "shards"

    def __init__(self, cfg, manifest: Manifest, layout: Layout, rank: int, options: StorageOptions, encoder):
        self.cfg, self.manifest, self.layout, self.rank, self.options = cfg, manifest, layout, rank, options
        self._layout_desc = layout.describe()  # Cached: state_dict() may be called after every batch.
        self.encoder = encoder
        self.epoch, self.batch_in_epoch = 0, 0
        self.resume_path: Optional[str] = None  # "exact" or "remapped" after load_state_dict.
        self._loader: Optional[DataLoader] = None
        self._it = None
        self._base_counters: Counter = Counter()
        self._worker_counters: dict[int, dict] = {}
        context = multiprocessing.get_context(cfg.start_method if cfg.num_workers else None)
        self.clock = OutageClock(f"data (rank {rank})", log.warning, context.Array("d", 3))
        if cfg.num_workers and cfg.start_method == "forkserver":
            start_forkserver()

    @property
    def batches_per_epoch(self) -> int:
        return self.layout.batches_per_epoch

    def __iter__(self) -> "TrainStream":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._start()
        item = next(self._it)
        if isinstance(item, WorkerFailure):
            item.error.add_note(f"Raised in {item.where}")
            raise item.error
        raw, labels, meta = item
        expected = (self.epoch, self.batch_in_epoch % self.layout.workers, self.batch_in_epoch // self.layout.workers)
        if (meta["epoch"], meta["worker"], meta["index"]) != expected:
            raise RuntimeError(
                f"data: batch order broken (got epoch/worker/index {meta['epoch']}/{meta['worker']}/"
                f"{meta['index']}, expected {expected[0]}/{expected[1]}/{expected[2]})"
            )
        self._worker_counters[meta["worker"]] = {k: meta[k] for k in COUNTER_NAMES}
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return raw, labels

    def _start(self) -> None:
        dataset = ShardWorkerStream(
            self.manifest, self.layout, self.rank, self.options, self.epoch, self.batch_in_epoch, self.clock
        )
        workers = self.cfg.num_workers
        self._loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
            multiprocessing_context=self.cfg.start_method if workers else None,
            persistent_workers=workers > 0,
            prefetch_factor=self.cfg.prefetch_factor if workers else None,
            worker_init_fn=_worker_init if workers else None,
        )
        self._it = iter(self._loader)

    def counters(self) -> dict[str, float]:
        """This rank's event counts since the run started (sum over workers; carried across resumes), and its store
        outages: how many, and the seconds they lasted (`outage_sec`, the ongoing one included)."""
        total = Counter(self._base_counters)
        for c in self._worker_counters.values():
            total.update(c)
        out: dict[str, float] = {name: int(total[name]) for name in COUNTER_NAMES}
        out["outages"] = int(total["outages"]) + self.clock.count()
        out["outage_sec"] = float(total["outage_sec"]) + self.clock.lost_sec()
        return out

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "epoch": self.epoch,
            "batch": self.batch_in_epoch,
            "batches_per_epoch": self.batches_per_epoch,
            "layout": dict(self._layout_desc),
            "counters": self.counters(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved position; logs whether the resume is exact or remapped (another layout)."""
        if state.get("kind") != self.kind:
            raise UserError(
                f"data state of kind {state.get('kind')!r} cannot resume a {self.kind!r} stream. Fix: "
                "resume with the data.kind the checkpoint was written with"
            )
        self.close()
        self._base_counters = Counter(state.get("counters", {}))
        self._worker_counters = {}
        self.clock.shared[:] = [0.0, 0.0, 0.0]  # The saved counters hold the outages before this point.
        saved, now = state["layout"], self._layout_desc
        if saved == now:
            self.epoch, self.batch_in_epoch, self.resume_path = int(state["epoch"]), int(state["batch"]), "exact"
            log.info(
                f"data: exact resume at epoch {self.epoch}, batch {self.batch_in_epoch}/{self.batches_per_epoch} "
                f"({now['world_size']} ranks x {self.layout.workers} workers, batch_gpu {now['batch_gpu']})"
            )
            return
        fraction = int(state["batch"]) / max(1, int(state["batches_per_epoch"]))
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(fraction * self.batches_per_epoch)
        self.resume_path = "remapped"
        changed = ", ".join(f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v)
        log.warning(
            f"data: resuming with a different data layout ({changed}): the sample order is not reproduced. "
            f"Continuing epoch {self.epoch} at batch {self.batch_in_epoch}/{self.batches_per_epoch} (the same "
            f"fraction, {fraction:.1%}, of the epoch) in the new layout's order; for the rest of this epoch "
            "some samples may repeat or be missed, later epochs again see every sample at most once"
        )

    def summary(self) -> str:
        m, lay = self.manifest, self.layout
        used = lay.batches_per_epoch * lay.batch_gpu * lay.world_size
        return (
            f"data: {m.num_samples} samples in {len(m.shards)} shards ({m.raw_dtype} {m.raw_shape}, "
            f"{m.encoder.get('kind')}) from {m.url}; {lay.world_size} ranks x {lay.workers} workers; epoch = "
            f"{lay.batches_per_epoch} batches of {lay.batch_gpu} per rank ({used / max(1, m.num_samples):.1%} of "
            "the samples)"
        )

    def close(self) -> None:
        """Stop the worker processes (the position and counters are kept)."""
        it, self._it, self._loader = self._it, None, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        for _worker, c in self._worker_counters.items():
            self._base_counters.update(c)
        self._worker_counters = {}

    def __enter__(self) -> "TrainStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
