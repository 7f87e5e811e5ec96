"""The process-group operations evaluation uses: the project's facade (`ect_scale.dist`), re-exported.

Evaluation runs under whatever `torch.distributed` default group the caller set up (DeepSpeed, torchrun, or the
trainer); `init_from_env` sets one up for the standalone launchers without importing DeepSpeed.
"""

from ect_scale.dist import all_reduce_sum_, barrier, get_rank, get_world_size, init_from_env, is_main, print0, shutdown
from ect_scale.dist import is_initialized as is_distributed

__all__ = ["all_reduce_sum_", "barrier", "get_rank", "get_world_size", "init_from_env", "is_main", "print0",
           "shutdown", "is_distributed"]
