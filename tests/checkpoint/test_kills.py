"""SIGKILLs during synchronous and asynchronous saves, and at a random moment, on 2 CPU ranks (ZeRO-1 fp32, a
checkpoint every step, EMA exports with every checkpoint: `ema.export_nimg: 0`).

One run is killed at chosen moments of a save, one session each, restarting after every kill:
  * async, rank 1 during the blocking copy (inside DeepSpeed's save_checkpoint);
  * sync, rank 1 half-way through DeepSpeed's optimizer file;
  * async, rank 0's background writer half-way through its trainer-state file;
  * async, rank 0's background writer with every file in place, just before COMPLETE;
  * async, rank 0's background writer just after COMPLETE, before `latest`;
  * sync, after the commit and before the EMA export of that checkpoint (the export the resume must write);
  * at a random moment of training (async);
then it runs to the end. After each kill the newest complete checkpoint is the one expected (a save without its
marker is never taken), and the finished run equals an uninterrupted one bit for bit: every EMA export file (named
by images seen here, so none overwrites another: same tensors bit for bit, same metadata), the stats rows, the
consolidated weights and EMAs, and DeepSpeed's optimizer files' tensors (Adam moments included).

The sessions are forked from one process that imported everything once; kills are SIGKILLs the process sends itself
from inside the real code path (a wrapped function), then the other rank is SIGKILLed like a launcher would."""

import json
import multiprocessing as mp
import os
import random
import signal
import sys
import time

import pytest
import torch

from tests.checkpoint.common import assert_states_equal, losses, make_cfg
from tests.distributed import free_port, run_ranks
from tests.engine.common import ListStream

pytestmark = pytest.mark.slow  # Several processes or a full run: not in the fast subset.

STEP, TOTAL = 4, 48  # Images per step (2 per rank), images in the run: 12 steps, 12 checkpoints.
EXTRA = {
    "train.batch_size": STEP,
    "train.total_nimg": TOTAL,
    "train.status_nimg": STEP,
    "checkpoint.interval_nimg": STEP,
    "checkpoint.keep_last": 3,
    "logging.sample_grid": 0,
    "engine.precision_check": "false",
}
DS_OPTIM = "ds/zero_pp_rank_{}_mp_rank_00_optim_states.pt"
# (async_save, kill, newest complete checkpoint afterwards). kill = (rank, images, moment, file) or "random".
PLAN = [
    (True, (1, 8, "capture", None), 4),
    (False, (1, 12, "mid-file", DS_OPTIM.format(1)), 8),
    (True, (0, 16, "mid-file", "rank-00000.safetensors"), 12),
    (True, (0, 20, "before-marker", None), 16),
    (True, (0, 24, "after-marker", None), 24),
    (False, (0, 28, "before-export", None), 28),
    (True, "random", None),
    (True, None, TOTAL),
]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(rank: int, kill) -> None:
    """Wrap the function of the real save path where `kill` strikes (only on the rank it names)."""
    import ect_scale.checkpoint.checkpointer as checkpointer
    import ect_scale.checkpoint.writer as writer
    from ect_scale.checkpoint.layout import LATEST, MARKER, tag_for
    from ect_scale.checkpoint.storage import Destination
    from ect_scale.train.outputs import EMAOutputs

    if not isinstance(kill, tuple) or kill[0] != rank:
        return
    _, nimg, moment, target = kill
    tag = tag_for(nimg)
    if moment == "capture":
        real_capture = checkpointer.capture_deepspeed

        def capture(ds_engine, save_dir, client_state, stage, log):
            def stage_then_die(obj):
                out = stage(obj)
                _die()  # Mid-capture: a state dict copied, DeepSpeed's save not finished.
                return out

            return real_capture(ds_engine, save_dir, client_state, stage_then_die if tag in save_dir else stage, log)

        checkpointer.capture_deepspeed = capture
    elif moment == "mid-file":
        real_write = writer.write_file

        def write_file(folder, fw):
            written = real_write(folder, fw)
            if folder.endswith(tag) and fw.rel == target:
                os.truncate(written[0], written[1] // 2)  # Half of the file on disk, then the kill.
                _die()
            return written

        writer.write_file = write_file
    elif moment in ("before-marker", "after-marker"):
        real_text = Destination.write_text_atomic

        def write_text_atomic(self, text, *parts):
            if moment == "before-marker" and parts == (tag, MARKER):
                _die()
            if moment == "after-marker" and parts == (LATEST,) and text.strip() == tag:
                _die()
            return real_text(self, text, *parts)

        Destination.write_text_atomic = write_text_atomic
    elif moment == "before-export":
        real_export = EMAOutputs.export

        def export(self, n):
            if n == nimg:
                _die()
            return real_export(self, n)

        EMAOutputs.export = export


def _session(rank, port, run_dir, async_save, kill, ready, log_path):
    """One rank of one invocation (a forked child): train until the end or until killed."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    torch.set_num_threads(1)
    from ect_scale.train.outputs import EMAOutputs
    from ect_scale.train.trainer import Trainer

    # Exports named by images seen (names count kimg, so every export of this short run would share one name).
    EMAOutputs.path = lambda self, n, profile: os.path.join(self.run_dir, "ema", f"ema-{n:09d}-{profile}.safetensors")
    _install_kill(rank, kill)
    cfg = make_cfg(run_dir, 1, "fp32", 2, **{**EXTRA, "checkpoint.async_save": str(async_save).lower()})
    trainer = Trainer(cfg, stream=ListStream(rank, 2))
    if rank == 0:
        ready.set()
    trainer.run()
    torch.distributed.destroy_process_group()


def _run_session(ctx, run_dir: str, async_save: bool, kill, log_path: str, rng: random.Random) -> list:
    ready = ctx.Event()
    port = free_port()
    procs = [ctx.Process(target=_session, args=(r, port, run_dir, async_save, kill, ready, log_path)) for r in range(2)]
    for p in procs:
        p.start()
    if kill == "random":  # A SIGKILL at a random moment of training (after 1-3 steps), to one rank.
        assert ready.wait(120), "the session did not start training"
        rows = _rows(run_dir) + rng.randint(1, 3)
        while _rows(run_dir) < rows and all(p.is_alive() for p in procs):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        victim = procs[rng.randrange(2)]
        if victim.is_alive():
            os.kill(victim.pid, signal.SIGKILL)
    deadline = time.time() + 240
    while any(p.is_alive() for p in procs) and time.time() < deadline:
        if any(p.exitcode not in (None, 0) for p in procs):  # One rank died: the launcher takes the rest down.
            for p in procs:
                if p.is_alive():
                    os.kill(p.pid, signal.SIGKILL)
        time.sleep(0.05)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    return [p.exitcode for p in procs]


def _rows(run_dir: str) -> int:
    path = os.path.join(run_dir, "stats.jsonl")
    return sum(1 for _ in open(path)) if os.path.exists(path) else 0


def _newest_complete(run_dir: str):
    folder = os.path.join(run_dir, "checkpoints")
    tags = sorted(t for t in os.listdir(folder) if os.path.exists(os.path.join(folder, t, "COMPLETE")))
    return int(tags[-1].split("-")[1]) if tags else None


def _director(rank, world_size, root):
    """Forks every session from this process (everything imported once), then compares the runs."""
    import deepspeed  # noqa: F401 - imported before forking, so that each session starts in a second
    import torch._dynamo  # noqa: F401

    import ect_scale.train.trainer  # noqa: F401

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        os.environ.pop(key, None)
    ctx, rng = mp.get_context("fork"), random.Random(22)
    ref, run = f"{root}/ref", f"{root}/run"
    out = {"ref_exit": _run_session(ctx, ref, True, None, f"{root}/ref.log", rng), "sessions": []}
    for i, (async_save, kill, newest) in enumerate(PLAN):
        t = time.time()
        codes = _run_session(ctx, run, async_save, kill, f"{root}/session{i}.log", rng)
        out["sessions"].append(
            {"exit": codes, "newest": _newest_complete(run), "expected": newest, "sec": round(time.time() - t, 1)}
        )
    out["logs"] = [open(f"{root}/session{i}.log").read() for i in range(len(PLAN))]
    out["exports"] = {
        name: _same_network_file(f"{ref}/ema/{name}", f"{run}/ema/{name}") for name in sorted(os.listdir(f"{ref}/ema"))
    }
    out["extra_exports"] = sorted(set(os.listdir(f"{run}/ema")) - set(os.listdir(f"{ref}/ema")))
    out["losses"] = (losses(ref), losses(run))
    out["final"] = _final_states(ref, run)
    return out


def _same_network_file(a: str, b: str):
    """True if both files hold the same tensors, bit for bit, and the same metadata (safetensors writes its metadata
    map in a per-process order, so the header bytes may differ)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not os.path.exists(b):
        return "missing"
    ta, tb = load_file(a), load_file(b)
    same = sorted(ta) == sorted(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    return same and safe_open(a, "pt").metadata() == safe_open(b, "pt").metadata()


def _final_states(ref: str, run: str) -> dict:
    from ect_scale.checkpoint.export import consolidated_network, find_checkpoint

    out = {}
    for what in ("online", "power-0.050", "power-0.100", "beta-0.9999"):
        out[what] = [consolidated_network(find_checkpoint(d), what)[0] for d in (ref, run)]
    for r in (0, 1):
        files = [os.path.join(find_checkpoint(d).display(), DS_OPTIM.format(r)) for d in (ref, run)]
        out[f"optim{r}"] = [_tensors(torch.load(f, map_location="cpu", weights_only=False)) for f in files]
    return out


def _tensors(obj, prefix: str = "") -> dict:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}/{key}").items()}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("kills"))
    return run_ranks(_director, 1, args=(root,), timeout=900)[0]


def test_every_kill_leaves_the_previous_complete_checkpoint_the_latest(result):
    assert result["ref_exit"] == [0, 0]
    for i, s in enumerate(result["sessions"]):
        if i < len(PLAN) - 1:  # A kill: the killed rank died of SIGKILL.
            assert -signal.SIGKILL in s["exit"], (i, s, result["logs"][i][-3000:])
        if s["expected"] is not None:
            assert s["newest"] == s["expected"], (i, s, result["logs"][i][-3000:])
    assert result["sessions"][-1]["exit"] == [0, 0], result["logs"][-1][-3000:]
    assert "This session: 0 images" not in result["logs"][-1]  # The random kill struck before the end.
    logs = result["logs"]
    # The restart after the mid-file kills names the interrupted saves it ignores.
    assert "ignoring" in logs[2] and "ckpt-000000000012: no COMPLETE marker" in logs[2], logs[2][-3000:]
    assert "resumed from" in logs[3] and "ckpt-000000000012 at 12 images (exact resume" in logs[3]
    # A kill after COMPLETE: that checkpoint is the latest, though `latest` still named the one before.
    assert "ckpt-000000000024 at 24 images" in logs[5]


def test_the_export_a_kill_prevented_is_written_after_the_resume(result):
    log = result["logs"][6]  # The session after the kill between the commit at 28 and its export.
    assert "resumed from" in log and "at 28 images" in log
    assert "ema: writing the exports at 28 images that the interrupted run did not write" in log, log[-3000:]
    assert "power-0.050, power-0.100, beta-0.9999" in log


def test_the_finished_run_equals_an_uninterrupted_one_bit_for_bit(result):
    exports = result["exports"]
    assert len(exports) == (TOTAL // STEP) * 3 and all(v is True for v in exports.values()), exports
    assert result["extra_exports"] == []
    ref_losses, run_losses = result["losses"]
    assert sorted(ref_losses) == list(range(STEP, TOTAL + 1, STEP)) and ref_losses == run_losses
    final = result["final"]
    for what in ("online", "power-0.050", "power-0.100", "beta-0.9999"):
        assert_states_equal(*final[what])
    for r in (0, 1):
        ref, run = final[f"optim{r}"]
        assert len(ref) >= 3 and sorted(ref) == sorted(run)
        assert_states_equal(ref, run)
    # (the sessions' wall times, for the record when a run is slow)
    print(json.dumps([s["sec"] for s in result["sessions"]]))
