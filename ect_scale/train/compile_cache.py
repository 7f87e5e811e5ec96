"""torch.compile's kernel cache in a folder that survives restarts: a resumed or re-launched run loads the compiled
kernels instead of compiling again (a cold compile of EDM2-S takes minutes)."""

from __future__ import annotations

import os
from typing import Optional

from ect_scale.config import EngineConfig


def setup_compile_cache(engine_cfg: EngineConfig, run_dir: str) -> Optional[str]:
    """Point inductor's (and Triton's) cache at `engine.compile_cache_dir` ("auto" = <run_dir>/compile_cache).
    Returns the folder in use (None = torch's default). A TORCHINDUCTOR_CACHE_DIR set by the user wins."""
    if not engine_cfg.compile or engine_cfg.compile_cache_dir is None:
        return os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    path = engine_cfg.compile_cache_dir
    if path == "auto":
        path = os.path.join(run_dir, "compile_cache")
    if "://" in path:
        return None  # Object storage cannot hold a compile cache; keep torch's default.
    os.makedirs(path, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(path)
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]
