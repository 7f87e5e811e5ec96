"""A run whose last save fails does not end as finished (1 CPU rank, synchronous saves): the final checkpoint and the
checkpoint at a slice stop, each failing with a real EFBIG (RLIMIT_FSIZE, like a full disk) while earlier saves
succeeded, end the run with one line naming the latest complete checkpoint (a `UserError`: exit code 2 through
`runtime/entry.py`), and no DONE marker is written; re-running resumes from that checkpoint and finishes."""

import os
import resource
import signal

import pytest

from tests.checkpoint.common import make_cfg
from tests.distributed import run_ranks
from tests.engine.common import ListStream

pytestmark = pytest.mark.slow  # DeepSpeed runs in a rank process.

CKPT = {"checkpoint.interval_nimg": 8, "checkpoint.async_save": "false", "logging.sample_grid": 0}


def _trainer(run_dir: str, **extra):
    from ect_scale.train.trainer import Trainer

    return Trainer(make_cfg(run_dir, 1, "fp32", **{**CKPT, **extra}), stream=ListStream(0, 2))


def _fail_save_at(trainer, nimg: int) -> None:
    """Writes beyond 64 KiB fail with EFBIG while the save at `nimg` runs."""
    real_save = trainer.checkpointer.save

    def save(t):
        if trainer.state.nimg != nimg:
            return real_save(t)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Else the kernel kills the process at the limit.
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
        try:
            return real_save(t)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    trainer.checkpointer.save = save


def _worker(rank, world_size, root):
    from ect_scale.runtime.errors import UserError

    out = {}
    for case, fail_at, extra in (
        ("final", 16, {"train.total_nimg": 16}),
        ("slice", 16, {"train.total_nimg": 24, "train.slice_nimg": 16}),
    ):
        run_dir = f"{root}/{case}"
        trainer = _trainer(run_dir, **extra)
        _fail_save_at(trainer, fail_at)
        try:
            trainer.run()
            out[case] = "no error"
        except UserError as e:
            out[case] = str(e)
        out[f"{case}_done"] = os.path.exists(f"{run_dir}/DONE")
        again = _trainer(run_dir, **{"train.total_nimg": extra["train.total_nimg"]})
        out[f"{case}_resumed"] = again.state.nimg
        again.run()
        out[f"{case}_done_again"] = os.path.exists(f"{run_dir}/DONE")
    return out


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("final-save"))
    return root, run_ranks(_worker, 1, args=(root,), timeout=300)[0]


@pytest.mark.parametrize("case, what", [("final", "the final checkpoint"), ("slice", "the checkpoint at the stop")])
def test_a_failed_last_save_is_one_line_naming_the_latest_checkpoint(result, case, what):
    root, out = result
    error = out[case]
    assert error.startswith(f"{what} ckpt-000000000016 at 16 images failed (rank 0: writing {root}/{case}/")
    assert "/checkpoints/ckpt-000000000016/ds/" in error and "\n" not in error  # The file that could not be written.
    assert f"the latest complete checkpoint is {root}/{case}/checkpoints/ckpt-000000000008. Fix: free space" in error
    assert not out[f"{case}_done"]
    assert out[f"{case}_resumed"] == 8 and out[f"{case}_done_again"]
