"""--help texts and the docs say what the commands do: example commands keep their line breaks, and the quickstart's
data is described where it is made (launchers/quickstart.sh), with numbers that agree with its configs."""

import os
import re
import sys

import pytest
import yaml

from tests.conftest import REPO, load_script
from tests.launchers.common import run


@pytest.mark.parametrize(
    "script",
    [
        "launchers/evaluate.py",
        "tools/fid_ref.py",
        "tools/search_tmid.py",
        "tools/import_edm2.py",
        "tools/make_shards.py",
    ],
)
def test_help_examples_keep_their_line_breaks(script, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # As in a pipe or a terminal of 80 columns.
    try:  # In-process (the script's own main), as `python <script> --help` runs it.
        code = load_script(script).main(["--help"])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr().out
    assert code in (0, None), out[-2000:]
    assert not re.search(r"\S {4,}--", out), "an example command ran into the next line"
    if script != "tools/make_shards.py":
        assert re.search(r" \\\n +(--|https)", out), "a continued example command"


def _quickstart_shards() -> tuple[int, int]:
    text = open(os.path.join(REPO, "launchers", "quickstart.sh")).read().replace("\\\n", " ")  # Join continued lines.
    line = next(ln for ln in text.splitlines() if "make_shards.py" in ln and not ln.startswith("#"))
    return int(re.search(r"--resolution (\d+)", line).group(1)), int(re.search(r"--num-shards (\d+)", line).group(1))


def test_the_quickstart_data_is_described_where_it_is_made():
    resolution, _ = _quickstart_shards()
    teacher = yaml.safe_load(open(os.path.join(REPO, "configs", "demo-digits-teacher.yaml")))
    from ect_scale.config import load_config

    net = load_config(None, [f"--network.preset={teacher['network']['preset']}", "--data.kind=synthetic"]).network
    assert net.img_resolution == resolution  # The shards fit the teacher.
    help_text = run([sys.executable, "tools/make_shards.py", "--help"], timeout=120).stdout
    doc = open(os.path.join(REPO, "docs", "data.md")).read()
    for text in (help_text, doc):
        assert "launchers/quickstart.sh" in text
        assert not re.search(r"quickstart[^\n]*\d+x\d+", text, re.I), "a quickstart size outside quickstart.sh"
