"""Pure pieces of the checkpoint layout: retention, config diffs, the COMPLETE marker, stream re-mapping,
destination removal order."""

import os
import zlib

import pytest

from ect_scale.checkpoint.layout import FileRecord, Marker, config_diff, retained, tag_for
from ect_scale.checkpoint.restore import stream_state_for
from ect_scale.checkpoint.storage import Destination, crc32_file


def test_retention_keeps_last_k_plus_first_after_every_multiple():
    nimgs = [8, 16, 24, 32, 40, 48, 56]
    assert retained(nimgs, keep_last=2, keep_every_nimg=0) == {48, 56}
    assert retained(nimgs, keep_last=1, keep_every_nimg=20) == {24, 40, 56}  # First at/after 20, 40; last.
    assert retained(nimgs, keep_last=3, keep_every_nimg=16) == {16, 32, 48, 40, 56}
    # Stable: a later checkpoint never displaces the one kept for a multiple.
    assert {24, 40} <= retained(nimgs + [64, 72], keep_last=1, keep_every_nimg=20)
    assert retained([5, 7], keep_last=1, keep_every_nimg=100) == {7}  # Nothing reached the first multiple yet.


def test_config_diff_names_changed_added_and_removed_fields():
    saved = {"ect.q": 2.0, "network.channel_mult": [1, 2], "train.seed": 0, "ema.beta": 0.9999}
    now = {"ect.q": 4.0, "network.channel_mult": (1, 2), "train.seed": 0, "ect.new_field": 1}
    assert config_diff(saved, now) == [
        "ect.new_field: (absent) (checkpoint) -> 1 (now)",
        "ect.q: 2.0 (checkpoint) -> 4.0 (now)",
        "ema.beta: 0.9999 (checkpoint) -> (absent) (now)",
    ]


def test_marker_round_trip_and_format_check():
    m = Marker(tag_for(1024), 1024, 2, {"a": FileRecord("a", 10, 123, 0), "ds/b": FileRecord("ds/b", 20, None, 1)})
    back = Marker.from_text(m.to_text())
    assert back.tag == "ckpt-000000001024" and back.total_bytes == 30 and back.files["ds/b"].rank == 1
    with pytest.raises(ValueError, match="format"):
        Marker.from_text('{"format": "other/9", "tag": "x", "nimg": 0, "world_size": 1, "files": {}}')


def test_stream_state_for_another_world_size_keeps_position_and_counter_totals():
    saved = [{"epoch": 1, "batch": 5, "counters": {"corrupt": r + 1, "retries": 10 * r}} for r in range(4)]
    two = [stream_state_for(r, 2, saved) for r in range(2)]
    assert [s["batch"] for s in two] == [5, 5]
    assert two[0]["counters"] == {"corrupt": 1 + 3, "retries": 0 + 20}
    assert two[1]["counters"] == {"corrupt": 2 + 4, "retries": 10 + 30}
    three = [stream_state_for(r, 3, saved[:1]) for r in range(3)]
    assert [s["counters"]["corrupt"] for s in three] == [1, 0, 0]
    assert stream_state_for(1, 2, [{"index": 7}]) == {"index": 7}  # No counters: position only.


def test_destination_removes_marker_first_and_only_checkpoint_folders(tmp_path):
    dest = Destination(str(tmp_path))
    folder = tmp_path / tag_for(8)
    os.makedirs(folder / "ds")
    (folder / "ds" / "x.pt").write_bytes(b"x" * 100)
    (folder / "COMPLETE").write_text("{}")
    assert dest.tags() == [tag_for(8)] and dest.is_complete(tag_for(8))
    assert crc32_file(str(folder / "ds" / "x.pt")) == zlib.crc32(b"x" * 100)
    with pytest.raises(ValueError, match="refusing"):
        dest.remove_checkpoint("ema")
    dest.remove_checkpoint(tag_for(8))
    assert dest.tags() == [] and not folder.exists()
