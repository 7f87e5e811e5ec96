"""Bad inputs on 2 CPU ranks (fp32 ZeRO-2), all in one pair of processes:
* a write that fails half-way on one rank (a real EFBIG from RLIMIT_FSIZE, like a full disk): the save is
  abandoned on every rank, its folder removed, the previous checkpoint stays the latest and training goes on;
* a corrupted file (CRC32), a truncated file and an interrupted save (no COMPLETE marker): resume skips them
  with a message naming the file and falls back to the newest good checkpoint, and the resumed run is still
  bit-identical to an uninterrupted one;
* a changed immutable config field: a clear error naming each field; checkpoint.resume=false over old
  checkpoints: refused."""

import contextlib
import io
import os
import resource
import signal

import pytest

from tests.checkpoint.common import ASYNC, assert_states_equal, losses, make_cfg, snapshot
from tests.distributed import run_ranks
from tests.engine.common import ListStream

pytestmark = pytest.mark.slow  # Several processes or a full run: not in the fast subset.

STAGE = 2
CKPT = {"checkpoint.interval_nimg": 8, "checkpoint.keep_last": 10}


def _trainer(rank: int, run_dir: str, **extra):
    from ect_scale.train.trainer import Trainer

    return Trainer(make_cfg(run_dir, STAGE, "fp32", **{**ASYNC, **CKPT, **extra}), stream=ListStream(rank, 2))


def _fail_save_at(trainer, nimg: int, rank: int) -> None:
    """On `rank`, limit the file size while the save at `nimg` runs and is written (writes beyond 64 KiB fail with
    EFBIG)."""
    real_save = trainer.checkpointer.save

    def save(t):
        if trainer.state.nimg != nimg or trainer.rank != rank:
            return real_save(t)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Else the kernel kills the process at the limit.
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
        try:
            ok = real_save(t)
            trainer.checkpointer.wait()  # The background writer writes under the limit too.
            return ok
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    trainer.checkpointer.save = save


def _damage(ckpts: str) -> None:
    with open(os.path.join(ckpts, "ckpt-000000000032", "rank-00001.safetensors"), "r+b") as f:
        f.seek(os.path.getsize(f.name) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))  # Same size, one flipped byte: only the CRC32 can tell.
    path = os.path.join(ckpts, "ckpt-000000000016", "ds", "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    os.truncate(path, os.path.getsize(path) // 2)
    os.makedirs(os.path.join(ckpts, "ckpt-000000000040", "ds"))  # A save interrupted before its marker.
    with open(os.path.join(ckpts, "ckpt-000000000040", "rank-00000.safetensors"), "wb") as f:
        f.write(b"partial")


def _error_of(fn) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test inspects the message
        return f"{type(e).__name__}: {e}"
    return "no error"


def _worker(rank, world_size, root):
    from ect_scale.runtime import dist

    ref = _trainer(rank, f"{root}/ref", **{"checkpoint.enabled": "false", "train.total_nimg": 40})
    ref.run()
    out = {"ref": snapshot(ref)}
    run_dir, ckpts = f"{root}/run", f"{root}/run/checkpoints"
    first = _trainer(rank, run_dir)
    _fail_save_at(first, 24, rank=1)
    first.run()
    out["first"] = {
        "reports": [r.__dict__ for r in first.checkpointer.reports],
        "nimg": first.state.nimg,
        "dirs": sorted(os.listdir(ckpts)),
        "latest": open(f"{ckpts}/latest").read().strip(),
    }
    if rank == 0:
        _damage(ckpts)
    dist.barrier()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        second = _trainer(rank, run_dir, **{"train.total_nimg": 40})
    out["resumed_at"] = second.state.nimg
    second.run()
    out["second"] = snapshot(second)
    out["second_log"] = log.getvalue()
    out["second_reports"] = [r.__dict__ for r in second.checkpointer.reports]
    out["config_error"] = _error_of(
        lambda: _trainer(rank, run_dir, **{"ect.q": 4, "train.seed": 1, "train.total_nimg": 48})
    )
    out["fresh_error"] = _error_of(lambda: _trainer(rank, run_dir, **{"checkpoint.resume": "false"}))
    return out


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad"))
    out = run_ranks(_worker, 2, args=(root,), timeout=300)
    return root, out


def test_failed_write_keeps_previous_checkpoint_and_training_goes_on(result):
    _, out = result
    for r in out:
        first = r["first"]
        assert [rep["ok"] for rep in first["reports"]] == [True, True, False, True]
        failed = first["reports"][2]
        assert failed["tag"] == "ckpt-000000000024" and list(failed["errors"]) == [1]
        assert "writing" in failed["errors"][1] and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in failed["errors"][1]
        assert first["nimg"] == 32  # Training continued past the failed save.
        assert "ckpt-000000000024" not in first["dirs"]  # The partial folder was removed.
        assert first["latest"] == "ckpt-000000000032"


def test_resume_skips_damaged_checkpoints_and_stays_exact(result):
    root, out = result
    log = out[0]["second_log"]
    assert "ignoring" in log and "ckpt-000000000040" in log and "no COMPLETE marker" in log
    assert "ckpt-000000000032" in log and "rank-00001.safetensors fails its CRC32 check" in log
    assert "ckpt-000000000016" in log and "zero_pp_rank_1_mp_rank_00_optim_states.pt has" in log and "truncated" in log
    assert "resumed from" in log and "ckpt-000000000008" in log
    assert out[0]["resumed_at"] == out[1]["resumed_at"] == 8
    # The replacement saves overwrite the damaged folders; the run ends exactly where an uninterrupted one does.
    assert [rep["ok"] for rep in out[0]["second_reports"]] == [True] * 4
    assert_states_equal(out[0]["ref"]["weights"], out[0]["second"]["weights"])
    for profile in out[0]["ref"]["emas"]:
        assert_states_equal(out[0]["ref"]["emas"][profile], out[0]["second"]["emas"][profile])
    ref, run = losses(f"{root}/ref"), losses(f"{root}/run")
    assert ref == run


def test_changed_config_is_refused_naming_the_fields(result):
    _, out = result
    for r in out:
        msg = r["config_error"]
        assert msg.startswith("CheckpointError") and "must not change" in msg
        assert "ect.q: 2.0 (checkpoint) -> 4.0 (now)" in msg and "train.seed: 0 (checkpoint) -> 1 (now)" in msg
        assert "train.total_nimg" not in msg  # Duration may change.
        assert "checkpoint.resume=false" in r["fresh_error"] and "ckpt-000000000040" in r["fresh_error"]
