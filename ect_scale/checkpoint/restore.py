"""Restoring everything but DeepSpeed's own state, after DeepSpeed loaded model and optimizer (every rank, no
collectives except the low-precision refresh).

Same layout (world size, ZeRO stage, precision): EMA shards, data position and RNG states are this rank's own,
bit for bit. Another layout: EMAs are consolidated from all ranks' files and re-sliced into this rank's
partitions (`EMATracker.load_full_state`), the data stream continues as the data package documents for another
world size (docs/data.md: same fraction of the epoch, sample order not reproduced), and RNG states keep their
fresh seeds (training randomness is drawn from per-(seed, rank, nimg) generators anyway).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import torch

from ect_scale.checkpoint.layout import CheckpointError
from ect_scale.checkpoint.parts import Checkpointable
from ect_scale.checkpoint.shards import RankFile, consolidate, fragment_table, open_rank_files, set_rng_state

if TYPE_CHECKING:
    from ect_scale.checkpoint.resume import ResumePlan
    from ect_scale.engine.ema import EMATracker
    from ect_scale.engine.master import MasterWeights


def restore_state(parts: Checkpointable, plan: "ResumePlan", rank: int, world_size: int) -> list[str]:
    """Restore everything but DeepSpeed's state from the plan's rank files; returns notes for the log."""
    eng = parts.engine
    eng.master.rebuild()  # DeepSpeed's load re-links the fp32 partitions.
    eng.place_optimizer_state()
    files = open_rank_files(plan.folder, plan.saved_world_size)
    same_world = plan.saved_world_size == world_size
    same_layout = same_world and files[rank].state["fragments"] == fragment_table(eng.master)
    _check_master(eng.master, files)
    eng.refresh_low_precision()
    _restore_buffers(eng.module, files[0])
    parts.state.load_state_dict(plan.meta["train_state"])
    eng.skipped_steps = parts.state.skipped_steps
    if same_layout:
        _load_ema_shards(parts.ema, files[rank])
    else:
        _load_ema_consolidated(parts.ema, files)
    parts.ema.nimg = int(files[0].state["ema_nimg"])
    if same_world:
        parts.stream.load_state_dict(files[rank].state["stream"])
        set_rng_state(*files[rank].rng())
        return []
    parts.stream.load_state_dict(stream_state_for(rank, world_size, [f.state["stream"] for f in files]))
    return [
        f"EMAs {', '.join(parts.ema.profiles)} re-sliced from {plan.saved_world_size} ranks' shards into "
        f"{world_size} ranks' partitions; data stream: continued at the same fraction of the epoch in the new "
        "layout's order (docs/data.md: for the rest of this epoch samples may repeat or be missed); RNG states "
        "not restored (training draws from per-(seed, rank, nimg) generators)"
    ]


def _check_master(master: "MasterWeights", files: list[RankFile]) -> None:
    """DeepSpeed's restored fp32 masters must equal the copy in the trainer-state files, bit for bit (catches a
    mismatched or partially loaded DeepSpeed checkpoint)."""
    names = sorted({f.name for f in master.fragments})
    expected = consolidate(files, "master", names, reshape=False)
    for f in master.fragments:
        ref = expected[f.name].narrow(0, f.start, f.view.numel())
        if not torch.equal(f.view.detach().cpu(), ref):
            diff = float((f.view.detach().cpu() - ref).abs().max())
            raise CheckpointError(
                f"after DeepSpeed's load, the fp32 master of {f.name} differs from the trainer-state "
                f"copy (max |diff| {diff:.3g}): the DeepSpeed files and the rank files do not belong "
                "together. Fix: resume from another checkpoint (delete this one's COMPLETE marker)"
            )


def _restore_buffers(module: torch.nn.Module, rf: RankFile) -> None:
    saved = rf.buffers()
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name in saved:
                b.copy_(saved[name].to(b.device, b.dtype))


def _load_ema_shards(ema: "EMATracker", rf: RankFile) -> None:
    profiles = rf.state["ema_profiles"]
    ema.load_state_dict(
        {"profiles": profiles, "nimg": rf.state["ema_nimg"], "shadows": {p: rf.flats(f"ema.{p}") for p in profiles}}
    )


def _load_ema_consolidated(ema: "EMATracker", files: list[RankFile]) -> None:
    if list(files[0].state["ema_profiles"]) != ema.profiles:
        raise CheckpointError(
            f"EMA profiles in the checkpoint {files[0].state['ema_profiles']} differ from ema.* "
            f"{ema.profiles}. Fix: resume with the same ema.stds and ema.beta"
        )
    names = sorted({f.name for f in ema.master.fragments})
    for profile in ema.profiles:
        ema.load_full_state(profile, consolidate(files, f"ema.{profile}", names, reshape=False))


def stream_state_for(rank: int, world_size: int, saved: list[dict]) -> dict:
    """The data-stream state for `rank` of `world_size` from the states of another world size: the position is
    the same on every saved rank (docs/data.md), so rank r takes old rank r's state (rank 0's if r is new);
    per-rank `counters` are redistributed (old rank q's counts go to new rank q % world_size) so totals survive."""
    state = dict(saved[rank] if rank < len(saved) else saved[0])
    if all("counters" in s for s in saved):
        total: Counter = Counter()
        for q, s in enumerate(saved):
            if q % world_size == rank:
                total.update(s["counters"])
        state["counters"] = {k: int(total.get(k, 0)) for k in saved[0]["counters"]}
    return state
