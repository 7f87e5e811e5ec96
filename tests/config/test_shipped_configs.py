"""Every YAML recipe in configs/ parses and validates."""

import glob
import os

import pytest

from ect_scale.config import load_config
from tests.conftest import REPO

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


def test_configs_exist():
    assert len(CONFIGS) >= 12


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_parses(path):
    cfg = load_config(path)
    assert cfg.train.batch_size % cfg.train.batch_gpu == 0
    name = os.path.basename(path)
    if "base" not in name and "img" in name:  # ect-img512-s.yaml: objective ect, preset edm2-img512-s; ecd-...: ecd.
        objective, rest = name.split("-", 1)
        assert cfg.network.preset and cfg.network.preset in "edm2-" + rest
        assert cfg.ect.objective == objective and cfg.network.dropout_res == 16
