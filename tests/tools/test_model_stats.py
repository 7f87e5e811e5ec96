"""tools/model_stats.py: EDM2 parameter counts and ~2x EDM2 Gflops for every preset, on CPU in seconds."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, load_script

# EDM2 Table 6 Gflops (MAC-based); fwd_flops must be about twice these.
TABLE6_GFLOPS = {
    "edm2-img512-xs": 45.5,
    "edm2-img512-s": 102.2,
    "edm2-img512-m": 180.8,
    "edm2-img512-l": 282.2,
    "edm2-img512-xl": 405.9,
    "edm2-img512-xxl": 552.1,
    "edm2-img64-s": 101.9,
    "edm2-img64-m": 180.8,
    "edm2-img64-l": 282.1,
    "edm2-img64-xl": 405.9,
}


def test_cli_prints_one_json_object():
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "model_stats.py"), "--preset", "edm2-img512-s"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    stats = json.loads(out)
    assert stats["params"] == 280_212_837 and stats["params_M"] == 280.21
    assert abs(stats["fwd_flops"] / 1e9 - 204) < 1.0


@pytest.mark.parametrize("preset", sorted(TABLE6_GFLOPS))
def test_every_preset(preset):
    stats_for = load_script("tools/model_stats.py").stats_for

    s = stats_for(preset)
    assert round(s["params_M"], 1) == s["edm2_table6_params_M"]
    assert abs(s["fwd_flops"] / 2e9 / TABLE6_GFLOPS[preset] - 1) < 0.01
