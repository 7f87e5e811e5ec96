"""DeepSpeed's side of a checkpoint: save through the engine with failures contained, load, universal conversion.

Facts this relies on (deepspeed 0.19.8, `runtime/engine.py`):
  * `save_checkpoint` is collective (a barrier at the start and the end, a tag-hash all-reduce); every file goes
    through `engine.checkpoint_engine.save` except the recovery scripts (`_copy_recovery_script`, rank 0).
    A write that raises on one rank would leave the others blocked in the final barrier, so the writer is wrapped
    for the duration of the save: the first failure is recorded, later writes are skipped, the barriers still
    run, and the ranks agree on the outcome afterwards (`Checkpointer.save`).
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
from dataclasses import dataclass, field
from typing import Optional

from ect_scale.checkpoint.layout import DS_TAG, CheckpointError

UNIVERSAL_INFO = "universal_checkpoint_info"


@dataclass
class WriteLog:
    """Files one rank wrote during a save, and the first error it met."""

    paths: list[str] = field(default_factory=list)
    error: Optional[str] = None

    def fail(self, what: str, e: BaseException) -> None:
        if self.error is None:
            self.error = f"{what}: {type(e).__name__}: {e}"


class _GuardedWriter:
    """Wraps DeepSpeed's checkpoint engine: records written paths, turns the first failed write into a record."""

    def __init__(self, inner, log: WriteLog):
        self._inner, self._log = inner, log

    def save(self, state_dict, path: str):
        if self._log.error is not None:
            return None
        try:
            self._inner.save(state_dict, path)
            self._log.paths.append(path)
        except Exception as e:  # noqa: BLE001 - any write failure (ENOSPC, EFBIG, EIO) is reported collectively
            self._log.fail(f"writing {path}", e)
            with contextlib.suppress(OSError):
                os.remove(path)
        return None

    def makedirs(self, path, exist_ok=False):
        try:
            return self._inner.makedirs(path, exist_ok=exist_ok)
        except Exception as e:  # noqa: BLE001
            self._log.fail(f"creating {path}", e)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def save_deepspeed(ds_engine, save_dir: str, client_state: dict, log: WriteLog) -> None:
    """`ds_engine.save_checkpoint(save_dir, tag="ds")` on every rank; never raises for a failed write. Written
    paths and the first error go to `log`; with an error already in `log` nothing is written (but DeepSpeed's
    collectives still run, so the ranks stay in step)."""
    inner = ds_engine.checkpoint_engine
    copy_scripts = ds_engine._copy_recovery_script

    def guarded_copy(save_path: str) -> None:
        if log.error is not None:
            return
        try:
            copy_scripts(save_path)
            log.paths += [
                p
                for p in (os.path.join(save_path, s) for s in ("zero_to_fp32.py", "zero_to_torch.py"))
                if os.path.isfile(p)
            ]
        except Exception as e:  # noqa: BLE001
            log.fail(f"copying DeepSpeed's recovery scripts to {save_path}", e)

    ds_engine.checkpoint_engine = _GuardedWriter(inner, log)
    ds_engine._copy_recovery_script = guarded_copy  # Instance attribute shadows the method for this save only.
    try:
        ds_engine.save_checkpoint(
            save_dir, tag=DS_TAG, client_state={UNIVERSAL_INFO: {}, **client_state}, save_latest=False
        )
    finally:
        ds_engine.checkpoint_engine = inner
        del ds_engine._copy_recovery_script


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
