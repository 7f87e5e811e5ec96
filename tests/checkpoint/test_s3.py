"""Checkpoints on object storage (a real S3 server on loopback, 2 CPU ranks): files are staged locally and
uploaded by the rank that wrote them, COMPLETE goes last; a save whose upload fails on one rank (access
denied) leaves the previous checkpoint the latest; a folder without a marker (a crash mid-upload) is ignored;
resume downloads, verifies and restores exactly."""

import pytest

from tests.checkpoint.common import ASYNC, assert_states_equal, make_cfg, snapshot
from tests.distributed import free_port, run_ranks
from tests.engine.common import ListStream

pytestmark = pytest.mark.slow  # Several processes or a full run: not in the fast subset.


def _trainer(rank, run_dir, dest, staging, **extra):
    from ect_scale.train.trainer import Trainer

    cfg = make_cfg(
        run_dir,
        1,
        "fp32",
        **{
            **ASYNC,
            "checkpoint.dir": dest,
            "checkpoint.staging_dir": staging,
            "checkpoint.interval_nimg": 8,
            "checkpoint.keep_last": 10,
            **extra,
        },
    )
    return Trainer(cfg, stream=ListStream(rank, 2))


def _cut_upload_at(trainer, nimg: int, rank: int, snaps: dict) -> None:
    """On `rank`, point the destination at a store that rejects the credentials (403; a refused connection would be
    an outage, ridden out: tests/runtime/test_store_outages.py) while the save at `nimg` uploads. Also record what
    every save wrote (snapshots, collective)."""
    import s3fs

    from tests.runtime.store_proxy import StoreProxy

    real_save, dest = trainer.checkpointer.save, trainer.checkpointer.dest

    def save(t):
        snaps[t.state.nimg] = snapshot(t)
        if t.state.nimg != nimg or t.rank != rank:
            return real_save(t)
        good, proxy = dest.fs, StoreProxy(f"http://127.0.0.1:{free_port()}")
        proxy.set_mode("403")
        dest.fs = s3fs.S3FileSystem(
            skip_instance_cache=True,
            endpoint_url=proxy.endpoint,
            config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 1},
        )
        try:
            ok = real_save(t)
            trainer.checkpointer.wait()  # The background writer uploads through the broken client.
            return ok
        finally:
            dest.fs = good
            proxy.close()

    trainer.checkpointer.save = save


def _worker(rank, world_size, root, bucket):
    import fsspec

    from ect_scale.runtime import dist

    dest, staging = f"{bucket}/run/checkpoints", f"{root}/staging"
    first = _trainer(rank, f"{root}/run", dest, staging, **{"train.slice_nimg": 24})
    saved: dict = {}
    _cut_upload_at(first, 24, rank=1, snaps=saved)
    from ect_scale.checkpoint.layout import CheckpointError

    try:  # The failed save is the one at the slice's stop: the run ends with the error, not as if it had saved.
        first.run()
        stop_error = None
    except CheckpointError as e:
        stop_error = str(e)
    fs = fsspec.filesystem("s3")
    if rank == 0:  # A save that crashed mid-upload: files, no marker.
        fs.pipe(f"{dest.removeprefix('s3://')}/ckpt-000000000032/rank-00000.safetensors", b"partial")
    dist.barrier()
    fs.invalidate_cache()
    listing = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(dest.removeprefix("s3://")))
    latest = fs.cat(f"{dest.removeprefix('s3://')}/latest").decode().strip()
    second = _trainer(rank, f"{root}/run", dest, staging, **{"train.total_nimg": 40})
    resumed = snapshot(second)
    second.run()
    end = snapshot(second)
    fs.invalidate_cache()
    final = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(dest.removeprefix("s3://")))
    exported = {}
    if rank == 0:  # tools/export.py's library path: rank files downloaded from the bucket, no DeepSpeed.
        from ect_scale.checkpoint.export import consolidated_network, find_checkpoint

        exported = {w: consolidated_network(find_checkpoint(dest), w)[0] for w in ("online", "power-0.050")}
    return {
        "saved": saved,
        "resumed": resumed,
        "end": end,
        "exported": exported,
        "reports": [r.__dict__ for r in first.checkpointer.reports],
        "stop_error": stop_error,
        "listing": listing,
        "latest": latest,
        "final": final,
        "final_reports": [r.__dict__ for r in second.checkpointer.reports],
    }


@pytest.fixture(scope="module")
def result(tmp_path_factory, s3_server):
    import uuid

    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"ckpt-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}).mkdir(bucket)
    root = str(tmp_path_factory.mktemp("s3"))
    return run_ranks(_worker, 2, args=(root, f"s3://{bucket}"), timeout=300)


def test_failed_upload_keeps_previous_checkpoint(result):
    for r in result:
        assert [rep["ok"] for rep in r["reports"]] == [True, True, False]
        failed = r["reports"][2]
        assert list(failed["errors"]) == [1] and "uploading" in failed["errors"][1]
        assert "Access Denied" in failed["errors"][1]
        assert failed["latest"].endswith("ckpt-000000000016")  # Known without asking the failing store.
        assert r["latest"] == "ckpt-000000000016"
        error = r["stop_error"]  # Every rank stops with one line naming the latest complete checkpoint.
        assert error is not None and "\n" not in error and "latest complete checkpoint is" in error
        assert error.split("latest complete checkpoint is ", 1)[1].startswith(f"{failed['latest']}.")
        assert r["listing"] == ["LOCK", "ckpt-000000000008", "ckpt-000000000016", "ckpt-000000000032", "latest"]


def test_resume_from_object_storage_is_exact(result):
    r = result[0]
    # The failed save at 24 is not resumed from: training restarts from 16, the partial folder at 32 is ignored.
    assert sorted(r["saved"]) == [8, 16, 24] and r["resumed"]["nimg"] == 16
    saved = r["saved"][16]
    assert_states_equal(saved["weights"], r["resumed"]["weights"])
    for profile in saved["emas"]:
        assert_states_equal(saved["emas"][profile], r["resumed"]["emas"][profile])
    for key in ("exp_avg", "exp_avg_sq"):
        assert_states_equal(saved["adam"][key], r["resumed"]["adam"][key])
    assert saved["stream"] == r["resumed"]["stream"]
    assert [rep["ok"] for rep in r["final_reports"]] == [True, True, True]
    assert r["final"] == [
        "LOCK",  # The run folder's lock record (ect_scale/runtime/lock.py).
        "ckpt-000000000008",
        "ckpt-000000000016",
        "ckpt-000000000024",
        "ckpt-000000000032",
        "ckpt-000000000040",
        "latest",
    ]
    assert r["final_reports"][0]["upload_sec"] > 0
    assert_states_equal(r["end"]["weights"], r["exported"]["online"])
    assert_states_equal(r["end"]["emas"]["power-0.050"], r["exported"]["power-0.050"])
