"""The pieces of an asynchronous save and of verification, without a training run (fast):
* the background writer runs one save at a time and turns its own crash into a failed save;
* host copies keep views, shared storage, Parameters and values of the step boundary; a tensor hidden in an
  object is refused rather than written later; buffers are reused by the next save;
* the streamed safetensors writer's files read back exactly with safetensors itself;
* `checkpoint.async_save: auto` is asynchronous on GPUs only; `checkpoint.checksum: false` is refused, naming the
  reason;
* a checkpoint whose marker lists a file without a CRC32 (older `checksum: false` runs) and holding a non-finite
  value is not resumed from: with no other checkpoint the error is one line."""

import json
import os
import time

import pytest
import torch

from ect_scale.checkpoint.files import WriteLog
from ect_scale.checkpoint.layout import FileRecord, Marker, RunSpec, rank_file, tag_for
from ect_scale.checkpoint.resume import plan_resume, verify_files
from ect_scale.checkpoint.shards import FORMAT, write_safetensors
from ect_scale.checkpoint.staging import HostStager
from ect_scale.checkpoint.storage import Destination
from ect_scale.checkpoint.writer import BackgroundWriter, SaveJob, SaveReport
from ect_scale.config import CheckpointConfig
from ect_scale.runtime.errors import UserError


class _Holder:  # A non-container object with a tensor inside (torch.save would pickle it live, later).
    def __init__(self, t):
        self.t = t


def test_host_copies_keep_structure_and_the_values_of_the_step_boundary():
    base = torch.arange(10, dtype=torch.float32)
    param = torch.nn.Parameter(torch.ones(2, 3))
    state = {"view": base[2:5], "whole": base.view(2, 5), "p": [param, (1, torch.Size([2]))], "s": "x", "n": {3}}
    stager = HostStager()
    stager.begin()
    host = stager.stage(state)
    stager.finish()
    base.add_(100)  # The next optimizer step overwrites the originals ...
    param.data.mul_(0)
    assert host["view"].tolist() == [2.0, 3.0, 4.0]  # ... the copies keep the step boundary's values.
    assert host["view"].untyped_storage().data_ptr() == host["whole"].untyped_storage().data_ptr()  # Shared once.
    assert host["view"].untyped_storage().nbytes() == 40  # The whole storage, as torch.save writes it.
    assert isinstance(host["p"][0], torch.nn.Parameter) and host["p"][0].sum() == 6
    assert host["p"][1] == (1, torch.Size([2])) and host["s"] == "x" and host["n"] == {3}
    assert stager.copied_bytes == 40 + 24 and stager.new_bytes == 64
    stager.release()
    stager.begin()
    stager.stage(state)
    assert stager.new_bytes == 0 and stager.held_bytes == 64  # The next save reuses the buffers.
    with pytest.raises(UserError, match="async_save=false"):
        stager.stage({"obj": _Holder(torch.zeros(2))})


def test_streamed_safetensors_read_back_exactly(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = {
        "f32": torch.randn(5),
        "bf16": torch.randn(3, 2).to(torch.bfloat16),
        "scalar": torch.tensor(7),
        "empty": torch.zeros(0),
        "rng": torch.get_rng_state(),
        "strided": torch.randn(4, 3).t(),
    }
    path = str(tmp_path / "x.safetensors")
    write_safetensors(path, tensors, {"ect_scale.format": "test"})
    back = load_file(path)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert safe_open(path, "pt").metadata() == {"ect_scale.format": "test"}


def _job(tag: str) -> SaveJob:
    return SaveJob(tag, 8, [], WriteLog(), SaveReport(tag, ok=False), started=time.time())


def test_the_background_writer_runs_one_save_at_a_time_and_reports_a_crash():
    def slow(job):
        time.sleep(0.2)
        job.report.ok = True
        return job.report

    writer = BackgroundWriter(slow)
    writer.submit(_job("a"))
    assert writer.busy and not writer.done()
    with pytest.raises(AssertionError, match="one save at a time"):
        writer.submit(_job("b"))
    report = writer.wait()
    assert report.ok and report.tag == "a" and not writer.busy and writer.wait() is None

    def crash(job):
        raise MemoryError("no room")

    writer = BackgroundWriter(crash)
    writer.submit(_job("c"))
    report = writer.wait()
    assert not report.ok and report.errors == {0: "background writer crashed: MemoryError: no room"}


def test_background_saves_are_the_default_on_gpus_only():
    auto = CheckpointConfig()
    assert auto.async_save == "auto" and auto.use_async("cuda") and not auto.use_async("cpu")
    assert CheckpointConfig(async_save=True).use_async("cpu")
    assert not CheckpointConfig(async_save=False).use_async("cuda")


def test_checksums_cannot_be_switched_off():
    with pytest.raises(UserError, match=r"checkpoint\.checksum: cannot be false.*non-finite.*Fix: remove"):
        CheckpointConfig(checksum=False).validate()


def _checkpoint_without_crc(root: str, nimg: int, value: float) -> None:
    """A 1-rank checkpoint whose marker lists its rank file without a CRC32 (as checksum=false wrote them)."""
    folder = os.path.join(root, tag_for(nimg))
    os.makedirs(folder)
    state = json.dumps({"num_flats": 1, "fragments": [], "rng": {}})
    write_safetensors(
        os.path.join(folder, rank_file(0)),
        {"ema.power-0.050.0": torch.tensor([1.0, value])},
        {"ect_scale.format": FORMAT, "ect_scale.state": state},
    )
    meta = {"immutable": {}, "zero_stage": 1, "precision": "fp32", "world_size": 1}
    with open(os.path.join(folder, "trainer.json"), "w") as f:
        json.dump(meta, f)
    size = os.path.getsize(os.path.join(folder, rank_file(0)))
    marker = Marker(tag_for(nimg), nimg, 1, {rank_file(0): FileRecord(rank_file(0), size, None, 0)})
    with open(os.path.join(folder, "COMPLETE"), "w") as f:
        f.write(marker.to_text())


def test_a_file_without_crc32_must_be_finite_and_the_last_error_is_one_line(tmp_path):
    root = str(tmp_path / "checkpoints")
    _checkpoint_without_crc(root, 8, 2.0)
    _checkpoint_without_crc(root, 16, float("nan"))
    marker = Marker.from_text(open(os.path.join(root, tag_for(16), "COMPLETE")).read())
    assert verify_files(os.path.join(root, tag_for(16)), marker) == [
        "rank-00000.safetensors has no CRC32 and holds non-finite values in ema.power-0.050.0 (corrupted)"
    ]
    spec = RunSpec({}, 1, "fp32", "fp32", {}, {})
    said: list[str] = []
    plan = plan_resume(CheckpointConfig(), spec, Destination(root), str(tmp_path / "staging"), said.append)
    assert plan.tag == tag_for(8)  # Falls back past the damaged one.
    assert any("cannot resume from" in s and tag_for(16) in s and "non-finite" in s for s in said), said
    assert any("written without CRC32s" in s for s in said), said
    # Damage the remaining one too: no weights from it, one line naming both.
    path = os.path.join(root, tag_for(8), rank_file(0))
    t = torch.tensor([1.0, float("inf")])
    write_safetensors(path, {"ema.power-0.050.0": t}, {"ect_scale.format": FORMAT, "ect_scale.state": "{}"})
    with pytest.raises(UserError) as err:
        plan_resume(CheckpointConfig(), spec, Destination(root), str(tmp_path / "staging"), said.append)
    msg = str(err.value)
    assert "\n" not in msg and tag_for(8) in msg and tag_for(16) in msg and "Fix: restore" in msg
