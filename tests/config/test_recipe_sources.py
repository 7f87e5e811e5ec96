"""Every ECT recipe names a source for each of its values (issue 16; ect_scale/config/sources.py).

The demo-digits configs are exempt: they are a CPU quickstart on a toy dataset, not a reproduction of a
published result, so their values have no paper to cite (their inline comments explain them).
"""

import glob
import os

import pytest

from ect_scale.config import Config, ConfigError, dump_config, load_config
from ect_scale.config.sources import file_unsourced_options, option_names, unsourced_options
from tests.conftest import REPO

RECIPES = sorted(glob.glob(os.path.join(REPO, "configs", "ect-*.yaml")))
IDS = [os.path.basename(p) for p in RECIPES]


def test_recipes_exist():
    assert len(RECIPES) >= 14


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_every_non_default_value_has_a_source(path):
    """Resolved through the base chain and compared with the defaults after preset expansion."""
    missing = unsourced_options(load_config(path))
    assert not missing, f"{os.path.basename(path)}: no source for {missing}; add them to its `sources:`"


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_every_value_a_file_sets_is_sourced_in_that_file(path):
    """A file that changes an inherited value must restate the new value's source (no stale base citation)."""
    missing = file_unsourced_options(path)
    assert not missing, f"{os.path.basename(path)} sets {missing} without a source of its own"


@pytest.mark.parametrize("path", glob.glob(os.path.join(REPO, "configs", "*.yaml")), ids=os.path.basename)
def test_no_unverified_markers(path):
    text = open(path).read().lower()
    for marker in ("[recalled]", "not verified", "from memory"):
        assert marker not in text, f"{os.path.basename(path)} still says {marker!r}"


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_missing_source_is_found(tmp_path):
    path = _write(tmp_path, "r.yaml", "data: {url: x}\nect: {q: 2}\nsources: {data.url: here}\n")
    assert unsourced_options(load_config(path)) == ["ect.q"]
    assert file_unsourced_options(path) == ["ect.q"]


def test_preset_expansion_is_the_default(tmp_path):
    """Fields a preset sets need no source; a value that differs from the preset's does."""
    path = _write(
        tmp_path,
        "r.yaml",
        "data: {url: x}\nnetwork: {preset: edm2-img512-m}\nsources: {data.url: u, network.preset: p}\n",
    )
    assert unsourced_options(load_config(path)) == []
    path = _write(
        tmp_path,
        "r2.yaml",
        "data: {url: x}\nnetwork: {preset: edm2-img512-m, dropout: 0.3}\nsources: {data.url: u, network.preset: p}\n",
    )
    assert unsourced_options(load_config(path)) == ["network.dropout"]


def test_sources_inherit_through_base_and_stale_ones_are_caught(tmp_path):
    _write(tmp_path, "a.yaml", "data: {url: x}\nect: {q: 2}\nsources: {data.url: u, ect.q: 'paper A, q = 2'}\n")
    child = _write(tmp_path, "b.yaml", "base: a.yaml\noptim: {lr: 0.01}\nsources: {optim.lr: 'paper B'}\n")
    cfg = load_config(child)
    assert cfg.sources["ect.q"] == "paper A, q = 2" and cfg.sources["optim.lr"] == "paper B"
    assert unsourced_options(cfg) == [] and file_unsourced_options(child) == []
    stale = _write(tmp_path, "c.yaml", "base: a.yaml\nect: {q: 3}\n")  # keeps a.yaml's citation of q = 2
    assert unsourced_options(load_config(stale)) == []
    assert file_unsourced_options(stale) == ["ect.q"]


@pytest.mark.parametrize(
    "sources, fragment",
    [
        ("{ect.qq: x}", "did you mean 'ect.q'"),
        ("{optim: x}", "names no option"),
        ("{ect.q: ''}", "must be non-empty text"),
    ],
)
def test_bad_source_keys_are_errors(tmp_path, sources, fragment):
    path = _write(tmp_path, "r.yaml", f"data: {{url: x}}\nsources: {sources}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert fragment in str(e.value) and "Fix:" in str(e.value)


def test_overrides_replace_the_source(tmp_path):
    path = os.path.join(REPO, "configs", "ect-img512-m.yaml")
    cfg = load_config(path, ["--optim.lr=3e-4", "--train.batch_gpu=16"])
    assert cfg.optim.lr == 3e-4
    assert cfg.sources["optim.lr"].startswith("command-line override --optim.lr (recipe source: ECT")
    assert cfg.sources["train.batch_gpu"].startswith("command-line override")


def test_sources_are_kept_in_the_resolved_config(tmp_path):
    cfg = load_config(os.path.join(REPO, "configs", "ect-img512-m.yaml"))
    assert cfg.sources["network.dropout"].startswith("sCM Table 4")
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, str(out))
    assert load_config(str(out)) == cfg


def test_option_names_cover_the_tree():
    names = set(option_names(Config))
    assert {"init", "ect.q", "optim.lr", "network.dropout", "ema.stds"} <= names and "sources" not in names


def test_reproduction_recipes_state_their_published_point():
    ecm = load_config(os.path.join(REPO, "configs", "ect-img512-m-ecm.yaml"))
    assert ecm.network.preset == "edm2-img512-m" and ecm.train.total_nimg == 12_800_000
    assert "6.88" in ecm.sources["train.total_nimg"] and "6.88" in ecm.description
    assert ecm.ect.stage_nimg * 4 == ecm.train.total_nimg
    assert ecm.sources["train.batch_size"].startswith("INFERRED")  # ECT does not state it; the file says so.
    xl = load_config(os.path.join(REPO, "configs", "ect-img64-xl-b1024.yaml"))
    assert (xl.train.batch_size, xl.train.total_nimg, xl.ect.stage_nimg) == (1024, 102_400_000, 25_600_000)
    assert xl.optim.decay_nimg == 2000 * 1024 and xl.optim.lr == 7e-4 and xl.network.dropout == 0.5
