"""`--dry-run` checks (ect_scale.train.preflight): every problem a run would meet, at once, each naming option and
fix."""

import os

import pytest

from ect_scale.config import NetworkConfig, from_dict, load_config
from ect_scale.networks import build_network
from ect_scale.networks.netfile import save_network_file
from ect_scale.train.preflight import check_run
from tests.conftest import REPO
from tests.data.conftest import write_id_shards
from tests.distributed import free_port

# A tiny pixel network that fits the 8x8 RGB, 10-class id shards.
NET = ["--network.preset=tiny-pixel", "--network.img_resolution=8", "--train.batch_gpu=4", "--train.batch_size=8"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "ids"
    write_id_shards(str(out), n=48, num_shards=4)
    return str(out / "manifest.json")


def _cfg(tmp_path, *extra, path=None):
    return load_config(path, NET + [f"--run_dir={tmp_path}/run", "--data.num_workers=1", *extra])


def test_a_ready_run_has_no_problems(tmp_path, shards):
    assert check_run(_cfg(tmp_path, f"--data.url={shards}"), world_size=2) == []
    assert check_run(_cfg(tmp_path, "--data.kind=synthetic", "--checkpoint.enabled=false")) == []


def test_the_shipped_512_recipe_lists_its_missing_init_and_placeholder_bucket():
    problems = check_run(load_config(os.path.join(REPO, "configs", "ect-img512-s.yaml")))
    assert [p.split(":", 1)[0] for p in problems] == ["init", "data.url"]
    assert "edm2-img512-s-2147483-0.130.safetensors does not exist" in problems[0]
    assert "tools/import_edm2.py" in problems[0]
    assert "s3://YOUR-BUCKET/imagenet512-sdvae/manifest.json is a placeholder" in problems[1]
    assert all(". Fix: " in p for p in problems)


def test_a_synthetic_run_does_not_read_the_recipes_placeholder_data_url():
    cfg = load_config(os.path.join(REPO, "configs", "ect-img512-s.yaml"), ["--data.kind=synthetic"])
    assert cfg.data.url.startswith("s3://YOUR-BUCKET/")
    problems = check_run(cfg)
    assert [p.split(":", 1)[0] for p in problems] == ["init"]  # Only the missing init file is left.


def test_every_problem_is_reported_at_once(tmp_path, shards):
    (tmp_path / "blocker").write_text("")
    other = tmp_path / "other.safetensors"
    config = from_dict(NetworkConfig, {"preset": "tiny-latent"}, "network")
    save_network_file(str(other), build_network(config).state_dict(), config)
    cfg = _cfg(
        tmp_path,
        f"--init={other}",
        f"--data.url={shards}",
        "--network.img_resolution=16",
        f"--run_dir={tmp_path}/blocker/run",
        "--checkpoint.dir=s3://YOUR-BUCKET/ckpt",
    )
    problems = check_run(cfg)
    assert len(problems) == 4 and all(". Fix: " in p for p in problems)
    assert problems[0].startswith(f"init: {other} has a different architecture")
    assert "img_channels: file=4 run=3" in problems[0]
    assert problems[1].startswith(f"data {shards}: samples are 3x8x8 with 10 classes, but the network expects 3x16x16")
    assert problems[2].startswith(f"run_dir: cannot create {tmp_path}/blocker/run: {tmp_path}/blocker is a file")
    assert problems[3].startswith("checkpoint.dir: s3://YOUR-BUCKET/ckpt is a placeholder")


def test_data_problems_name_the_option(tmp_path, shards):
    missing = check_run(_cfg(tmp_path, f"--data.url={tmp_path}/nowhere/manifest.json"))
    assert len(missing) == 1
    assert missing[0].startswith(f"data.url: cannot read {tmp_path}/nowhere/manifest.json: not found")
    layout = check_run(_cfg(tmp_path, f"--data.url={shards}", "--data.num_workers=4"), world_size=2)
    assert len(layout) == 1 and layout[0].startswith("data.num_workers: 2 ranks x 4 workers = 8 readers but")


def test_an_unreachable_store_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    endpoint = f"http://127.0.0.1:{free_port()}"  # Nothing listens there.
    problems = check_run(
        _cfg(
            tmp_path,
            "--data.url=s3://bucket/data/manifest.json",
            f"--data.endpoint_url={endpoint}",
            "--checkpoint.enabled=false",
        )
    )
    assert len(problems) == 1 and "data.url: cannot read s3://bucket/data/manifest.json" in problems[0]
    assert f"the S3 endpoint {endpoint} is unreachable" in problems[0] and ". Fix: " in problems[0]
