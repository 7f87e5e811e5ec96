"""A store outage longer than checkpoint.outage_window_s during a background save (the loopback S3 server behind the
fault proxy, one process): the writer gives up on the save, `poll` only reports, and the next `wait` stops the run
with part A's one line naming the latest complete checkpoint; a save the writer finished before it is the latest.
The same through a whole run, synchronously: tests/runtime/test_run_outages.py."""

import time

import pytest

from ect_scale.checkpoint import Checkpointer, RunSpec
from ect_scale.checkpoint.files import FileWrite, WriteLog
from ect_scale.checkpoint.writer import SaveJob, SaveReport
from ect_scale.config import CheckpointConfig
from ect_scale.runtime.outage import StoreOutageError
from tests.runtime.store_proxy import StoreProxy

pytestmark = pytest.mark.slow  # Store outages of seconds.


def _job(nimg: int) -> SaveJob:
    tag = f"ckpt-{nimg:012d}"
    report = SaveReport(tag, ok=False, nimg=nimg, background=True)
    return SaveJob(tag, nimg, [FileWrite("trainer.json", "text", "{}")], WriteLog(), report, started=time.time())


def test_an_outage_past_its_window_in_the_background_stops_the_run_at_the_next_wait(
    s3_server, s3_bucket, tmp_path, monkeypatch
):
    proxy = StoreProxy(s3_server)
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", proxy.endpoint)  # The checkpointer's store is behind the proxy.
    try:
        ccfg = CheckpointConfig(
            dir=f"{s3_bucket}/ckpts", async_save=True, outage_window_s=1, staging_dir=str(tmp_path / "staging")
        )
        ckpt = Checkpointer(ccfg, str(tmp_path / "run"), RunSpec({}, 1, "fp32", "fp32", {}, {}), say=print)
        ckpt.writer.submit(_job(8))  # The store answers: committed.
        assert ckpt.wait() >= 0 and ckpt.reports[-1].ok and ckpt.latest_complete == "ckpt-000000000008"
        proxy.set_mode("refuse")
        ckpt.writer.submit(_job(16))
        while not ckpt.writer.done():
            time.sleep(0.05)
        ckpt.poll()  # Reports, never raises (ranks may poll at different steps).
        report = ckpt.reports[-1]
        assert not report.ok and report.outage is not None
        with pytest.raises(StoreOutageError) as err:
            ckpt.wait()
        line = str(err.value)
        assert "\n" not in line and "longer than checkpoint.outage_window_s=1 s" in line
        latest = f"the latest complete checkpoint is {s3_bucket}/ckpts/ckpt-000000000008"
        assert f"checkpoint ckpt-000000000016 was not saved, {latest}" in line
        assert line.count("ckpt-000000000008") == 1 and ". Fix: " in line
    finally:
        proxy.close()
