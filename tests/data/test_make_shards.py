"""tools/make_shards.py and the shard writer: sources, the EDM2 crop, manifests and checksums on S3, many writers,
resume without redoing finished shards, unreadable images, and the SD-VAE path with a tiny random VAE."""

import dataclasses
import hashlib
import json
import os
import stat
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from ect_scale.config import DataConfig
from ect_scale.data import build_train_stream, load_manifest
from ect_scale.data.convert import PixelConverter, VaeConverter
from ect_scale.data.encoders import EDM2_RAW_MEAN, LatentEncoder, build_encoder
from ect_scale.data.images import ArraySource, center_crop_imagenet
from ect_scale.data.shard_writer import WriterOptions, write_shards
from ect_scale.data.storage import filesystem, read_bytes
from tests.conftest import REPO, load_script
from tests.data.conftest import id_images, write_id_shards

make_shards = load_script("tools/make_shards.py")


@pytest.mark.slow  # ~10 s of launcher subprocesses.
def test_digits_to_s3_with_the_cli(s3_bucket, s3_server):
    out = f"{s3_bucket}/digits32"
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "make_shards.py"),
        "--source",
        "sklearn-digits",
        "--out",
        out,
        "--resolution",
        "32",
        "--pixels",
        "--num-shards",
        "8",
        "--endpoint-url",
        s3_server,
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "committed shard-000007.tar (8/8)" in run.stdout and "manifest.json: 1797 samples in 8 shards" in run.stdout
    m = load_manifest(out)
    assert (m.num_samples, m.label_dim, m.raw_shape, m.raw_dtype) == (1797, 10, [3, 32, 32], "uint8")
    assert sum(m.class_counts) == 1797 and min(m.class_counts) >= 170 and m.encoder == {"kind": "pixels"}
    assert m.source["kind"] == "sklearn-digits" and m.skipped["count"] == 0
    assert sorted(s.num_samples for s in m.shards) == [224] * 3 + [225] * 5  # Balanced shard sizes.
    for i, shard in enumerate(m.shards):
        assert hashlib.sha256(read_bytes(m.shard_url(i))).hexdigest() == shard.sha256
    stream = build_train_stream(DataConfig(url=out, num_workers=0), batch_gpu=8, rank=0, world_size=1, seed=0)
    raw, labels = next(stream)
    assert raw.shape == (8, 3, 32, 32) and raw.dtype == torch.uint8 and labels.dtype == torch.int64
    assert raw.float().std() > 20 and 0 <= labels.min() and labels.max() <= 9  # Real digit images, not blanks.


BOX, BICUBIC = PIL.Image.Resampling.BOX, PIL.Image.Resampling.BICUBIC


@pytest.mark.parametrize(
    "size,resolution,steps",
    [
        ((1024, 768), 256, [(BOX, (512, 384)), (BICUBIC, (341, 256))]),
        ((300, 200), 64, [(BOX, (150, 100)), (BICUBIC, (96, 64))]),
        ((8, 8), 32, [(BICUBIC, (32, 32))]),
    ],
)
def test_center_crop_is_adms(size, resolution, steps):
    """BOX halving while the short side >= 2x the target, BICUBIC to the target short side, central window."""
    img = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = img
    for method, step_size in steps:
        expected = expected.resize(step_size, resample=method)
    arr = np.asarray(expected)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    out = center_crop_imagenet(img, resolution)
    assert out.shape == (resolution, resolution, 3)
    assert np.array_equal(out, arr[top : top + resolution, left : left + resolution])


def _png(path, size, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_image_tree_skips_unreadable_images_and_lists_them(tmp_path):
    root = tmp_path / "train"
    _png(str(root / "n002" / "a.png"), (40, 30), 200)
    _png(str(root / "n002" / "sub" / "b.png"), (30, 40), 100)
    _png(str(root / "n001" / "c.JPEG"), (64, 48), 50)
    (root / "n001" / "broken.JPEG").write_bytes(b"this is not a JPEG")
    (root / "n001" / "notes.txt").write_text("ignored")
    out = str(tmp_path / "shards")
    assert (
        make_shards.main(
            [
                "--source",
                str(root),
                "--out",
                out,
                "--resolution",
                "16",
                "--pixels",
                "--num-shards",
                "2",
                "--io-threads",
                "2",
            ]
        )
        == 0
    )
    m = load_manifest(out)
    assert m.class_names == ["n001", "n002"] and m.label_dim == 2
    assert m.num_samples == 3 and m.class_counts == [1, 2]
    assert m.skipped["count"] == 1 and m.skipped["items"][0]["path"] == os.path.join("n001", "broken.JPEG")
    assert m.source["num_images"] == 4
    stream = build_train_stream(
        DataConfig(url=out, num_workers=0, shuffle_buffer=0), batch_gpu=1, rank=0, world_size=1, seed=0
    )
    seen = sorted((int(lab), int(raw[0, 0, 0, 0])) for raw, lab in (next(stream) for _ in range(3)))
    assert [lab for lab, _ in seen] == [0, 1, 1] and [v for _, v in seen[1:]] == [100, 200]
    assert abs(seen[0][1] - 50) <= 2  # The JPEG (lossy) of class n001.


def test_flat_folder_with_class_name_labels(tmp_path):
    for name, value in (("x.png", 10), ("y.png", 20), ("z.png", 30)):
        _png(str(tmp_path / "imgs" / name), (16, 16), value)
    (tmp_path / "labels.txt").write_text("# file label\nz.png cat\nx.png dog\ny.png,cat\n")
    out = str(tmp_path / "shards")
    assert (
        make_shards.main(
            [
                "--source",
                str(tmp_path / "imgs"),
                "--labels",
                str(tmp_path / "labels.txt"),
                "--out",
                out,
                "--resolution",
                "16",
                "--pixels",
                "--num-shards",
                "1",
            ]
        )
        == 0
    )
    m = load_manifest(out)
    assert m.class_names == ["cat", "dog"] and m.class_counts == [2, 1]


class CountingConverter(PixelConverter):
    """Counts converted images; raises KeyboardInterrupt after `crash_after` calls (a killed writer)."""

    def __init__(self, crash_after=None):
        self.calls, self.images, self.crash_after = 0, 0, crash_after

    def convert(self, images):
        if self.crash_after is not None and self.calls == self.crash_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.images += len(images)
        return super().convert(images)


def test_resume_keeps_committed_shards_and_redoes_the_rest(s3_bucket):
    out = f"{s3_bucket}/resume"
    source = ArraySource(id_images(120), [i % 10 for i in range(120)])
    opts = WriterOptions(resolution=8, num_shards=6, batch=10, progress_s=1e9)  # 20 images = 2 batches per shard.
    with pytest.raises(KeyboardInterrupt):
        write_shards(source, out, CountingConverter(crash_after=5), opts, log=lambda *_: None)  # Dies in shard 2.
    fs, path = filesystem(out)
    fs.invalidate_cache()
    committed = sorted(p.rsplit("/", 1)[1] for p in fs.ls(path, detail=False) if p.endswith(".tar"))
    assert committed == ["shard-000000.tar", "shard-000001.tar"]
    assert not fs.exists(path + "/manifest.json")
    sha_before = hashlib.sha256(fs.cat_file(path + "/shard-000000.tar")).hexdigest()
    blob = fs.cat_file(path + "/shard-000001.tar")
    fs.pipe_file(path + "/shard-000001.tar", blob[:1000])  # A damaged committed shard: size no longer matches.
    lines = []
    converter = CountingConverter()
    manifest = write_shards(source, out, converter, opts, log=lines.append)
    assert "already committed: 1, to write: 5 (100 images)" in lines[0]
    assert converter.images == 100  # Shard 0 was not redone.
    assert manifest["shards"][0]["sha256"] == sha_before
    reference = write_shards(source, f"{s3_bucket}/uninterrupted", PixelConverter(), opts, log=lambda *_: None)
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in reference["shards"]]
    blob = bytearray(fs.cat_file(path + "/shard-000004.tar"))
    blob[600] ^= 0xFF  # Same size, different content: only --verify notices.
    fs.pipe_file(path + "/shard-000004.tar", bytes(blob))
    lines.clear()
    write_shards(source, out, PixelConverter(), opts, log=lines.append)
    assert "already committed: 6, to write: 0" in lines[0]
    lines.clear()
    write_shards(source, out, PixelConverter(), dataclasses.replace(opts, verify=True), log=lines.append)
    assert "already committed: 5, to write: 1 (20 images)" in lines[0]


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert (
        make_shards.main(
            ["--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--resolution", "16", "--pixels"]
        )
        == 2
    )  # The entry points' code for an expected failure.
    err = capsys.readouterr().err
    assert err.startswith("error: --source") and "not a folder" in err and "Fix:" in err and "Traceback" not in err


def test_two_writers_produce_the_same_shards_as_one(tmp_path):
    one = write_id_shards(str(tmp_path / "one"), n=60, num_shards=5)
    assert write_id_shards(str(tmp_path / "two"), n=60, num_shards=5, rank=1, world_size=2) is None
    assert not os.path.exists(tmp_path / "two" / "manifest.json")  # Writer 0 writes it, once all shards exist.
    two = write_id_shards(str(tmp_path / "two"), n=60, num_shards=5, rank=0, world_size=2)
    assert [s["sha256"] for s in two["shards"]] == [s["sha256"] for s in one["shards"]]
    assert two["num_samples"] == 60 and two["class_counts"] == [6] * 10


def test_changed_settings_are_refused_on_resume(tmp_path):
    write_id_shards(str(tmp_path / "d"), n=24, num_shards=2)
    with pytest.raises(ValueError, match=r"different settings \(num_shards: 2 -> 3\).*choose a new --out"):
        write_id_shards(str(tmp_path / "d"), n=24, num_shards=3)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
    )
    path = str(tmp_path_factory.mktemp("tiny-vae"))
    vae.save_pretrained(path)
    return path


def test_vae_shards_store_the_posterior_mean_and_std(tiny_vae_dir, tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    source = ArraySource(images, list(range(6)))  # Label = image index, to match samples to images.
    out = str(tmp_path / "latents")
    manifest = write_shards(
        source,
        out,
        VaeConverter(tiny_vae_dir, "cpu", "float16"),
        WriterOptions(resolution=32, num_shards=2, progress_s=1e9),
        log=lambda *_: None,
    )
    assert manifest["raw"] == {"shape": [8, 4, 4], "dtype": "float16"}
    enc = manifest["encoder"]
    assert enc["kind"] == "sd-vae" and enc["vae"] == tiny_vae_dir and enc["raw_mean"] == list(EDM2_RAW_MEAN)
    stream = build_train_stream(DataConfig(url=out, num_workers=0), batch_gpu=3, rank=0, world_size=1, seed=0)
    assert isinstance(stream.encoder, LatentEncoder)
    reference = LatentEncoder(vae=tiny_vae_dir).encode_pixels(torch.from_numpy(images).permute(0, 3, 1, 2))
    for _ in range(2):
        raw, labels = next(stream)
        assert raw.dtype == torch.float16 and raw.shape == (3, 8, 4, 4)
        torch.testing.assert_close(raw.float(), reference[labels], atol=2e-3, rtol=2e-3)
        assert (raw[:, 4:] > 0).all()  # The std half.
    decoded = build_encoder(json.loads(json.dumps(enc))).decode(stream.encoder.encode(raw))
    assert decoded.shape == (3, 3, 32, 32) and decoded.dtype == torch.uint8


def test_shards_and_the_manifest_get_the_usual_modes(tmp_path):
    """Not mkstemp's 0600: others sharing the data folder must read the shards (the umask decides, here 027)."""
    old = os.umask(0o027)
    try:
        assert (
            make_shards.main(
                [
                    "--source",
                    "sklearn-digits",
                    "--out",
                    str(tmp_path / "d"),
                    "--resolution",
                    "8",
                    "--pixels",
                    "--num-shards",
                    "2",
                    "--limit",
                    "40",
                ]
            )
            == 0
        )
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "d").rglob("*")}
    assert modes["shard-000000.tar"] == 0o640 and modes["manifest.json"] == 0o640 and modes["_records"] == 0o750
    assert set(modes.values()) == {0o640, 0o750}
