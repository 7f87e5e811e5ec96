"""Fixtures of the evaluation tests: detector stand-ins on disk, loaded through the real loading paths."""

import pytest

from tests.eval.standins import write_dinov2_standin, write_inception_standin


@pytest.fixture(scope="session")
def detector_files(tmp_path_factory):
    """{'inception': .pt path, 'dinov2_repo': dir, 'dinov2_weights': .pth path}, written once per session."""
    root = tmp_path_factory.mktemp("detectors")
    repo, weights = write_dinov2_standin(str(root))
    return {"inception": write_inception_standin(str(root)), "dinov2_repo": repo, "dinov2_weights": weights}
