"""A training run whose checkpoint store (the loopback S3 server behind the fault proxy) goes out during saves: a
restart (404s for everything) shorter than checkpoint.outage_window_s is ridden out and counted
(Checkpoint/outage_sec); a refusal longer than the window stops
the run with one line that names the latest complete checkpoint; re-running after the store is back resumes from
exactly that state (resume is bit-exact from there on: tests/checkpoint/test_s3.py) and finishes (DONE)."""

import json
import os
import threading

import pytest

from tests.checkpoint.common import assert_states_equal, make_cfg, snapshot
from tests.distributed import run_ranks
from tests.engine.common import ListStream

pytestmark = pytest.mark.slow  # A 1-rank DeepSpeed run on CPU and store outages of seconds.


def _trainer(run_dir: str, **extra):
    from ect_scale.train.trainer import Trainer

    return Trainer(make_cfg(run_dir, 1, "fp32", **{"train.total_nimg": 32, **extra}), stream=ListStream(0, 2))


def _worker(rank, world_size, root, bucket, upstream):
    from ect_scale.runtime.outage import StoreOutageError
    from tests.runtime.store_proxy import StoreProxy

    proxy = StoreProxy(upstream)
    os.environ["FSSPEC_S3_ENDPOINT_URL"] = proxy.endpoint  # Checkpoint I/O (and the folder's lease) go through it.
    extra = {
        "checkpoint.dir": f"{bucket}/run/checkpoints",
        "checkpoint.interval_nimg": 8,
        "checkpoint.outage_window_s": 3,
    }
    first = _trainer(f"{root}/run", **extra)
    real_save, said, saved = first.checkpointer.save, [], {}
    first.checkpointer.say = lambda text: (said.append(text), first.monitor.print(text))

    def save(trainer):  # As the save at 16 begins the store restarts (1.5 s of 404s); at 24 it goes for good.
        saved[trainer.state.nimg] = snapshot(trainer)
        if trainer.state.nimg in (16, 24):
            proxy.set_mode("404" if trainer.state.nimg == 16 else "refuse")
            back = threading.Timer(1.5 if trainer.state.nimg == 16 else 120, proxy.set_mode, ("pass",))
            back.daemon = True  # The 120 s one must not hold this process at its exit.
            back.start()
        return real_save(trainer)

    first.checkpointer.save = save
    out = {"error": None, "said": said}
    try:
        first.run()
    except StoreOutageError as e:
        out["error"] = str(e)
    out["done_after_first"] = os.path.exists(f"{root}/run/DONE")
    proxy.set_mode("pass")
    second = _trainer(f"{root}/run", **extra)
    out["saved"], out["resumed"] = saved[16], snapshot(second)
    second.run()
    out["done"] = os.path.exists(f"{root}/run/DONE")
    out["stats"] = [json.loads(line) for line in open(f"{root}/run/stats.jsonl")]
    proxy.close()
    return out


@pytest.fixture(scope="module")
def result(tmp_path_factory, s3_server):
    import uuid

    import s3fs

    bucket = f"outage-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True).mkdir(bucket)
    root = str(tmp_path_factory.mktemp("run-outage"))
    return run_ranks(_worker, 1, args=(root, f"s3://{bucket}", s3_server), timeout=400)[0], f"s3://{bucket}"


def test_a_short_outage_during_a_save_is_ridden_out_and_counted(result):
    out, bucket = result
    saved = [s for s in out["said"] if s.startswith("checkpoint: saved")]
    assert [s.split(" (")[0].rsplit("/", 1)[1] for s in saved] == ["ckpt-000000000008", "ckpt-000000000016"]
    assert "s of the save waiting for the store)" in saved[1]  # The save's time breakdown shows the outage.
    lost = [row.get("Checkpoint/outage_sec", 0) for row in out["stats"]]
    assert max(lost) > 0.5  # In stats.jsonl (and TensorBoard) from the status line after the outage.


def test_a_long_outage_stops_the_run_naming_the_latest_checkpoint_and_nothing_is_lost(result):
    out, bucket = result
    error = out["error"]
    assert error is not None and "\n" not in error
    assert "longer than checkpoint.outage_window_s=3 s" in error
    assert f"checkpoint ckpt-000000000024 was not saved, the latest complete checkpoint is {bucket}/run/" in error
    assert "checkpoints/ckpt-000000000016. Fix: check that the store is up" in error
    assert "the store has not answered for " in error and "(cannot connect: " in error
    assert out["resumed"]["nimg"] == 16 and not out["done_after_first"]
    saved, resumed = out["saved"], out["resumed"]  # Exactly the state of the named checkpoint (then: test_s3.py).
    assert_states_equal(saved["weights"], resumed["weights"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert_states_equal(saved["adam"][key], resumed["adam"][key])
    for profile in out["saved"]["emas"]:
        assert_states_equal(out["saved"]["emas"][profile], out["resumed"]["emas"][profile])
    assert out["saved"]["stream"] == out["resumed"]["stream"] and out["done"]
