"""What a checkpoint saves and restores, as a narrow interface: the checkpoint package needs no training loop.

`Checkpointable` is any object with these five parts (the trainer is one; tests and tools can build their own):

    engine    the DeepSpeed engine wrapper: model, optimizer and fp32 master weights (`ect_scale.engine.zero.Engine`)
    ema       the EMA shadows over the master partitions (`ect_scale.engine.ema.EMATracker`)
    stream    the data position: `state_dict()` / `load_state_dict()` of the training stream
    state     the counters: images seen, steps, skipped steps, wall time (`state_dict()` / `load_state_dict()`)
    encoder   what turns raw data into network inputs; only its `describe()` is stored

The RNG states are the process's own (torch, CUDA, Python, NumPy) and need no part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from ect_scale.engine.ema import EMATracker
    from ect_scale.engine.master import MasterWeights


class EngineParts(Protocol):
    engine: Any  # deepspeed.DeepSpeedEngine (save_checkpoint / load_checkpoint).
    master: "MasterWeights"  # This rank's fp32 master fragments.
    module: torch.nn.Module  # The network (buffers are saved by rank 0).
    param_shapes: dict[str, torch.Size]
    skipped_steps: int

    def place_optimizer_state(self) -> None: ...

    def refresh_low_precision(self) -> None: ...


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Counters(Stateful, Protocol):
    nimg: int
    skipped_steps: int


class Describable(Protocol):
    def describe(self) -> dict: ...


class Checkpointable(Protocol):
    engine: EngineParts
    ema: "EMATracker"
    stream: Stateful
    state: Counters
    encoder: Describable
