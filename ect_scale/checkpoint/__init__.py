"""Sharded checkpoints: collective save with an atomic COMPLETE marker, retention, exact and elastic resume,
fsspec destinations (local/shared filesystems and object storage), consolidation without DeepSpeed.

See docs/checkpoints.md. `Checkpointer` is what the trainer uses; `layout` documents the folder structure.
"""

from ect_scale.checkpoint.checkpointer import Checkpointer, SaveReport
from ect_scale.checkpoint.layout import CheckpointError, RunSpec, retained, tag_for

__all__ = ["Checkpointer", "CheckpointError", "RunSpec", "SaveReport", "retained", "tag_for"]
