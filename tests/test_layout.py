"""tests/ mirrors the package: one folder per wing of ect_scale/ (and one per entry-point folder), and only the
repository-wide checks and the harness's own tests at the root."""

import os

from tests.conftest import REPO

ENTRY_POINTS = {"launchers", "tools"}
ROOT_TESTS = {"test_durations.py", "test_harness.py", "test_import_graph.py", "test_layout.py", "test_references.py"}


def _dirs(path: str) -> set[str]:
    return {d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith((".", "__"))}


def test_every_test_folder_is_a_wing_or_an_entry_point_folder():
    wings = _dirs(os.path.join(REPO, "ect_scale"))
    extra = _dirs(os.path.join(REPO, "tests")) - wings - ENTRY_POINTS
    assert not extra, f"tests/{sorted(extra)} mirror no wing of ect_scale/ ({sorted(wings)}) and no entry-point folder"


def test_only_repository_wide_tests_at_the_root():
    root = {f for f in os.listdir(os.path.join(REPO, "tests")) if f.startswith("test_") and f.endswith(".py")}
    assert root <= ROOT_TESTS, f"move {sorted(root - ROOT_TESTS)} into the folder of the wing it tests"
