"""tools/precision_report.py as a user runs it: a recipe whose data is not reachable from here, a preset on the CPU,
the table on stdout and the JSON with every number; bad modes give one line and exit code 2."""

import json
import subprocess
import sys

from tests.conftest import REPO

RECIPE = """\
ect: {q: 4, stage_nimg: 100, c: 0.01}
train: {total_nimg: 400}
data: {kind: shards}   # No url: the report only needs the ECT schedule.
"""


def _report(*args):
    return subprocess.run(
        [sys.executable, "tools/precision_report.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_table_and_json_for_every_stage_of_the_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "prec.json"
    res = _report(
        "--preset",
        "tiny-latent",
        "--gain",
        "0.5",
        "--config",
        str(recipe),
        "--device",
        "cpu",
        "--modes",
        "bf16,fp16,tf32",
        "--t",
        "2,10",
        "--samples",
        "4",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "bf16 err (x sig)" in res.stdout and "last stage, error relative to tf32" in res.stdout
    assert "tf32 equals fp32" in res.stdout  # On a CPU.
    report = json.loads(out.read_text())
    assert sorted({r["stage"] for r in report["rows"]}) == [0, 1, 2, 3]  # 400 images / 100 per stage.
    assert all(r["c"] == 0.01 and r["errors"]["bf16"] > r["errors"]["fp16"] > 0 for r in report["rows"])
    assert report["compiled"] is False and report["source"].startswith("tiny-latent")


def test_unknown_mode_is_one_line():
    res = _report("--preset", "tiny-latent", "--device", "cpu", "--modes", "fp8")
    assert res.returncode == 2
    assert (
        res.stderr.strip().startswith("error: --modes: unknown ['fp8']") and len(res.stderr.strip().splitlines()) == 1
    )
