"""Configuration: typed building, overrides, clear errors, image-count parsing, dump/reload."""

import pytest
import yaml

from ect_scale.config import Config, ConfigError, dump_config, immutable_fields, load_config, parse_nimg

URL = ["--data.url=/tmp/manifest.json"]


def test_nimg_suffixes():
    assert parse_nimg("12.8M") == 12_800_000
    assert parse_nimg("128Mi") == 128 * 2**20
    assert parse_nimg("500k") == 500_000
    assert parse_nimg(3200000) == 3_200_000
    assert parse_nimg("2Gi") == 2 * 2**30
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_nimg("lots")


def test_overrides_are_typed_and_dotted():
    cfg = load_config(
        None,
        URL
        + [
            "--ect.q=2",
            "--train.total_nimg=6.4M",
            "--network.preset=edm2-img64-s",
            "--ect.t_mid=[2.0, 0.5]",
            "--engine.compile",
            "true",
            "--ema.beta=null",
        ],
    )
    assert cfg.ect.q == 2.0 and isinstance(cfg.ect.q, float)
    assert cfg.train.total_nimg == 6_400_000
    assert cfg.network.model_channels == 192 and cfg.network.img_channels == 3
    assert cfg.ect.t_mid == [2.0, 0.5] and cfg.engine.compile is True and cfg.ema.beta is None


def test_preset_then_explicit_fields_win():
    cfg = load_config(None, URL + ["--network.preset=edm2-img512-xl", "--network.dropout=0.5"])
    assert cfg.network.model_channels == 384 and cfg.network.dropout == 0.5


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--ect.q=1"], "ect.q: must be > 1"),
        (["--ect.qq=2"], "Did you mean 'q'"),
        (["--network.preset=edm2-img512-huge"], "unknown preset"),
        (["--train.batch_size=100", "--train.batch_gpu=32"], "train.batch_size: must be a multiple"),
        (["--ect.weighting=snr"], "must be one of"),
        (["--optim.lr=fast"], "optim.lr: expected a number"),
        (["--ema.stds=[0.5]"], "sigma_rel must be in"),
        (["--ect.sigma_data=0.6"], "must equal network.sigma_data"),
        (["--ect.t_mid=[100]"], "t_mid"),
    ],
)
def test_errors_name_option_constraint_and_fix(args, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, URL + args)
    assert fragment in str(e.value) and "Fix:" in str(e.value)


def test_missing_data_url_is_explained():
    with pytest.raises(ConfigError, match="data.url: is required"):
        load_config(None, [])


def test_dump_roundtrip(tmp_path):
    cfg = load_config(None, URL + ["--network.preset=tiny-latent", "--ect.q=8"])
    path = tmp_path / "resolved.yaml"
    dump_config(cfg, str(path))
    again = load_config(str(path))
    assert again == cfg
    assert yaml.safe_load(path.read_text())["ect"]["q"] == 8.0


def test_base_inheritance_and_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("ect: {q: 2, k: 4}\ndata: {url: x}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nect: {q: 3}\n")
    cfg = load_config(str(tmp_path / "b.yaml"))
    assert cfg.ect.q == 3 and cfg.ect.k == 4
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(str(tmp_path / "c.yaml"))


def test_a_yaml_syntax_error_is_one_line_with_its_position(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  total_nimg: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line 3, column 1 .*Fix: correct the YAML"):
        load_config(str(tmp_path / "bad.yaml"))


def test_immutable_fields_exclude_speed_options():
    a = load_config(None, URL + ["--network.preset=tiny-latent"])
    b = load_config(
        None,
        URL
        + ["--network.preset=tiny-latent", "--engine.precision=bf16", "--engine.zero_stage=2", "--train.batch_gpu=16"],
    )
    assert immutable_fields(a) == immutable_fields(b)
    c = load_config(None, URL + ["--network.preset=tiny-latent", "--ect.q=8"])
    assert immutable_fields(a)["ect.q"] != immutable_fields(c)["ect.q"]


def test_accumulation_rounds():
    cfg = load_config(None, URL + ["--train.batch_size=1024", "--train.batch_gpu=32"])
    assert cfg.train.accumulation_rounds(8) == 4
    with pytest.raises(ConfigError, match="not divisible by the world size"):
        cfg.train.accumulation_rounds(3)
    with pytest.raises(ConfigError, match="batch_gpu"):
        Config().train.accumulation_rounds(8)  # 128 / 8 = 16 per GPU < batch_gpu 32.
