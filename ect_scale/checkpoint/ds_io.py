"""DeepSpeed's side of a checkpoint: save through the engine with failures contained, load, universal conversion.

Facts this relies on (deepspeed 0.19.8, `runtime/engine.py`):
  * `save_checkpoint` is collective (a barrier at the start and the end, a tag-hash all-reduce); every file goes
    through `engine.checkpoint_engine.save` (and folders through its `makedirs`) except the recovery script
    (`_copy_recovery_script`, rank 0), and with `save_latest=False` nothing else touches the filesystem. DeepSpeed
    has no asynchronous save of its own (deepspeedai/DeepSpeed#5721; its "decoupled" engine hands the live state
    dicts to a writer process and waits for it before the next optimizer step). So the engine is replaced for the
    duration of the save by one that captures each state dict (staged to host memory) as a file to write later
    (`capture_deepspeed`); the files are those `torch.save` would have written, loadable by `load_checkpoint`
    and `ds_to_universal` as before. A capture that fails on one rank is recorded, the barriers still run, and
    the ranks agree on the outcome afterwards.
  * ZeRO-1/2 keep `client_state` only in rank 0's `mp_rank_00_model_states.pt`; ZeRO-3 writes it on every rank.
  * `universal_checkpoint_info` must be in the client state for `ds_to_universal` (deepspeed
  `checkpoint/ds_to_universal.py`), and
    `checkpoint.load_universal` is switched off right after the load (DeepSpeed#7546: with it on, ZeRO-3 saved
    only rank 0's model states; 0.19.8 names save files per rank again, but loads with the flag on still read
    `latest_universal` and rank 0's model states only).
  * `deepspeed.utils.zero_to_fp32` cannot read bf16 ZeRO-1 (BF16_Optimizer) or stage-0 checkpoints; exports use
    our own rank files instead.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from typing import Any, Callable

from ect_scale.checkpoint.files import FileWrite, WriteLog
from ect_scale.checkpoint.layout import DS_TAG, CheckpointError

UNIVERSAL_INFO = "universal_checkpoint_info"


class _CapturingWriter:
    """Stands in for DeepSpeed's checkpoint engine during a save: each state dict DeepSpeed would write is staged
    (copied to host memory, or passed through for a synchronous save) and recorded as a file to write later;
    nothing touches the filesystem. The first failure is recorded and later files are skipped; DeepSpeed's
    collectives still run, so the ranks stay in step."""

    def __init__(self, inner, root: str, stage: Callable[[Any], Any], log: WriteLog, writes: list[FileWrite]):
        self._inner, self._root, self._stage, self._log, self._writes = inner, root, stage, log, writes
        self._zipfile = bool(getattr(inner, "zipfile_serialization", True))

    def save(self, state_dict, path: str):
        if self._log.error is not None:
            return None
        try:
            self._writes.append(FileWrite(self.rel(path), "torch", self._stage(state_dict), self._zipfile))
        except Exception as e:  # noqa: BLE001 - reported collectively, like a failed write
            self._log.fail(f"copying the state for {path}", e)
        return None

    def makedirs(self, path, exist_ok=False):
        return None  # The writer creates folders as it writes.

    def preserves_storage_sharing(self) -> bool:
        return False  # No clone_tensors_for_torch_save: the stager keeps sharing and copies to the host itself.

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self._root).replace(os.sep, "/")

    def __getattr__(self, name):
        return getattr(self._inner, name)


def capture_deepspeed(
    ds_engine, save_dir: str, client_state: dict, stage: Callable[[Any], Any], log: WriteLog
) -> list[FileWrite]:
    """`ds_engine.save_checkpoint(save_dir, tag="ds")` on every rank (collective: DeepSpeed's barriers and tag
    check), with every file captured instead of written: returns this rank's files (paths relative to
    `save_dir`), their state dicts passed through `stage`. Never raises for a failed capture (see `log`)."""
    inner = ds_engine.checkpoint_engine
    writes: list[FileWrite] = []
    capture = _CapturingWriter(inner, save_dir, stage, log, writes)

    def copy_scripts(save_path: str) -> None:  # DeepSpeed's _copy_recovery_script (rank 0), deferred.
        import deepspeed.utils

        for script in ("zero_to_fp32.py", "zero_to_torch.py"):
            src = os.path.join(os.path.dirname(deepspeed.utils.__file__), script)
            if os.path.isfile(src):
                writes.append(FileWrite(capture.rel(os.path.join(save_path, script)), "copy", src))

    ds_engine.checkpoint_engine = capture
    ds_engine._copy_recovery_script = copy_scripts  # Instance attribute shadows the method for this save only.
    try:
        ds_engine.save_checkpoint(
            save_dir, tag=DS_TAG, client_state={UNIVERSAL_INFO: {}, **client_state}, save_latest=False
        )
    finally:
        ds_engine.checkpoint_engine = inner
        del ds_engine._copy_recovery_script
    return writes


def load_deepspeed(ds_engine, load_dir: str, tag: str, universal: bool) -> dict:
    """Load model and optimizer state (collective). Returns DeepSpeed's client state."""
    path, client = ds_engine.load_checkpoint(
        load_dir, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint files in {load_dir}/{tag}")
    if universal:
        # DeepSpeed#7546: leaving load_universal on makes the next ZeRO-3 save write only rank 0's model states.
        ds_engine._config.load_universal_checkpoint = False
    return client or {}


def convert_to_universal(ds_dir: str, out_dir: str, workers: int) -> float:
    """`python -m deepspeed.checkpoint.ds_to_universal` in-process; returns seconds. Writes `latest_universal`
    next to `out_dir`."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    args = argparse.Namespace(
        input_folder=ds_dir,
        output_folder=out_dir,
        num_extract_workers=workers,
        num_merge_workers=max(1, workers // 2),
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )
    t0 = time.time()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            ds_to_universal(args)
    except BaseException as e:  # noqa: BLE001 - DeepSpeed asserts and raises KeyError on unusable inputs
        tail = "\n".join(log.getvalue().splitlines()[-5:])
        raise CheckpointError(
            f"converting {ds_dir} to a universal checkpoint failed ({type(e).__name__}: {e}; "
            f"ds_to_universal said: {tail!r})"
        ) from None
    return time.time() - t0


def ds_version() -> str:
    import deepspeed

    return deepspeed.__version__
