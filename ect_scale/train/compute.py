"""Compute accounting: what a run has spent as images grow (FLOPs, device-hours, wall time), the compute recorded
by the network it started from, and the hardware's peak for MFU.

Training FLOPs are counted from the network's own FLOP count (`networks.flops.model_stats`, hardware FLOPs = 2 x
MACs), times the forward-pass equivalents the objective runs per image (`objective.flop_passes()`): a forward
with gradients costs 3 (forward + a backward of about twice the forward), a forward without gradients 1. ECT's
step is 4 (online forward + backward, and the stop-gradient target forward, as MFU counts it); EDM2's diffusion
loss is 3. Networks other than the online one (a distillation teacher) are counted with their own FLOP count.

The count is the nominal one: ECT's target pass is counted even where a whole batch has r = 0 and the network is
not called. A distillation run counts its teacher (and guide, and CD's target network theta-) by their own forward
FLOPs; the teacher's own pretraining is reported beside it (`Compute/teacher_*`), never added. Device-hours are
wall time of the training loop times the number of ranks (GPU-hours on GPUs), checkpoints and exports included;
evaluation is counted in wall time too, and reported separately (`Timing/eval_sec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch

# Dense bf16 peak FLOP/s by device name (torchtitan's table; H200 = H100 SXM compute).
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10", 125e12),
    ("V100", 125e12),
]


def peak_flops(device: torch.device) -> Optional[float]:
    """Dense bf16 peak of the device, or None (e.g. on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS:
        if key in name:
            return value
    return None


def flops_per_image(passes: Mapping[str, float], fwd_flops: Mapping[str, float]) -> float:
    """Training FLOPs per image: sum over networks of (forward-pass equivalents) x (that network's forward FLOPs).

    `passes` is the objective's `flop_passes()` ({"online": 4.0} for ECT), `fwd_flops` the forward FLOPs per sample
    of each network it names."""
    missing = sorted(set(passes) - set(fwd_flops))
    if missing:
        raise ValueError(f"flops_per_image: no FLOP count for {missing} (have {sorted(fwd_flops)})")
    return float(sum(n * fwd_flops[name] for name, n in passes.items()))


@dataclass
class ComputeRecord:
    """A run's training compute at some number of images seen."""

    nimg: int
    train_flops: float  # Training FLOPs spent so far (nominal; see the module docstring).
    device_hours: float  # Wall time x ranks of the training loop (GPU-hours on GPUs).
    wall_hours: float  # Wall time of the training loop across resumes.
    device: str  # "cuda" or "cpu": what device_hours are hours of.

    def scalars(self) -> dict[str, float]:
        """The keys every stats.jsonl row, TensorBoard step and evaluation record carries."""
        return {
            "Compute/train_flops": self.train_flops,
            "Compute/device_hours": self.device_hours,
            "Compute/wall_hours": self.wall_hours,
        }

    def to_meta(self) -> dict:
        """What an exported network file records about the training that made it: the deterministic part only (a
        resumed run writes the same file, bit for bit, as an uninterrupted one; hours are in stats.jsonl)."""
        return {"nimg": self.nimg, "train_flops": self.train_flops}


class ComputeMeter:
    """The training compute of a run: FLOPs from images seen, hours from the trainer's counters (`TrainState` in
    `train/state.py`: `elapsed_sec`, `device_sec`), so it is exact across resumes and world-size changes."""

    def __init__(self, flops_per_image: float, device_type: str):
        self.flops_per_image = float(flops_per_image)
        self.device_type = device_type

    def record(self, nimg: int, elapsed_sec: float, device_sec: float) -> ComputeRecord:
        return ComputeRecord(
            nimg=int(nimg),
            train_flops=nimg * self.flops_per_image,
            device_hours=device_sec / 3600,
            wall_hours=elapsed_sec / 3600,
            device=self.device_type,
        )


def init_compute(meta: dict, init_fwd_flops: Optional[float], role: str = "init") -> dict[str, float]:
    """The compute the init file records about its own training, as scalars reported alongside the run's own
    (never added to it): an ect_scale export carries its `compute` record; an imported EDM2 snapshot carries the
    images it was trained on (`meta["edm2"]["nimg"]`), counted with EDM2's diffusion loss (3 forward-pass
    equivalents per image) of the same network. {} when the file records neither. `role` names the file in the
    keys: "init", or "teacher" / "guide" for a distillation run's frozen networks (Compute/teacher_train_flops)."""
    if isinstance(meta.get("compute"), dict) and "train_flops" in meta["compute"]:
        c = meta["compute"]
        return {f"Compute/{role}_train_flops": float(c["train_flops"]), f"Compute/{role}_nimg": float(c.get("nimg", 0))}
    edm2_nimg = (meta.get("edm2") or {}).get("nimg")
    if edm2_nimg and init_fwd_flops:
        return {
            f"Compute/{role}_train_flops": 3.0 * init_fwd_flops * float(edm2_nimg),
            f"Compute/{role}_nimg": float(edm2_nimg),
        }
    return {}
