"""The `slow` marker is checked against the durations of the run (tests/durations.py), in a real pytest session."""

import os

import pytest

from tests.conftest import REPO

INNER = """
import time
import pytest

def test_quick():
    pass

def test_unmarked_and_long():
    time.sleep(0.3)

@pytest.mark.slow
def test_marked_and_long():
    time.sleep(0.3)
"""


@pytest.mark.parametrize(
    "limit, fails, args", [("0.2", True, []), ("5", False, []), ("0", False, []), ("0.1", True, ["-n", "2"])]
)
def test_an_unmarked_test_over_the_threshold_fails_the_session(pytester, monkeypatch, limit, fails, args):
    """With -n 2 (pytest-xdist) the reports come from the workers and the threshold doubles (0.2 s here)."""
    monkeypatch.setenv("ECT_SCALE_SLOW_S", limit)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))  # (Subprocesses.)
    pytester.makeini("[pytest]\nmarkers =\n    slow: over the threshold\n")
    pytester.makeconftest('pytest_plugins = ["tests.durations"]\n')
    pytester.makepyfile(test_inner=INNER)
    result = (pytester.runpytest_subprocess if args else pytester.runpytest_inprocess)("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=3)
    assert (result.ret != 0) == fails
    text = result.stdout.str()
    assert ("test_unmarked_and_long  (mark it @pytest.mark.slow" in text) == fails
    assert "test_marked_and_long  (mark it" not in text
