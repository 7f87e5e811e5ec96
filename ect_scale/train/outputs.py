"""What a run produces from its EMAs: world-size-independent network files under <run_dir>/ema, sample grids, and
in-loop evaluation (FID / FD of each EMA at 1 and 2 steps). Every public method is collective.

    outputs = EMAOutputs(cfg, run_dir, ema, engine, encoder, monitor, compute_record)
    outputs.after_resume(nimg, batch_size)          # exports a kill prevented, from the restored EMAs
    if outputs.every.due(before, after): outputs.export(nimg)
    if outputs.evaluator_every.due(before, after): outputs.evaluate(nimg)
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import torch

from ect_scale.config import Config, to_dict
from ect_scale.networks.netfile import save_network_file
from ect_scale.networks.precond import Precond
from ect_scale.runtime import dist
from ect_scale.runtime.intervals import Interval


class EvalSchedule:
    """When in-loop evaluation is due: every `eval.interval_nimg` images (an `Interval`), and at the step that
    reaches each of `eval.at_nimg` (log-spaced budgets of a scaling sweep). A step from `before` to `after` images
    reaches n when before < n <= after, the rule `Interval` uses for its multiples."""

    def __init__(self, interval_nimg: int, at_nimg: list[int]):
        self.every = Interval(interval_nimg)
        self.at_nimg = tuple(sorted(at_nimg))

    def due(self, before_nimg: int, after_nimg: int) -> bool:
        return self.every.due(before_nimg, after_nimg) or any(before_nimg < n <= after_nimg for n in self.at_nimg)


class EMAOutputs:
    """EMA exports (`ema.export_nimg`; 0 = with every checkpoint), their sample grids (`logging.sample_grid`), and
    in-loop evaluation (`eval.interval_nimg`, `eval.at_nimg`)."""

    def __init__(self, cfg: Config, run_dir: str, ema, engine, encoder, monitor, compute_record=None):
        self.network_cfg, self.ect_cfg, self.eval_cfg = cfg.network, cfg.ect, cfg.eval
        self.export_dtype = torch.float16 if cfg.ema.export_dtype == "float16" else torch.float32
        self.grid_samples = cfg.logging.sample_grid
        self.run_dir, self.ema, self.engine, self.encoder, self.monitor = run_dir, ema, engine, encoder, monitor
        self.every = Interval(cfg.ema.export_nimg)  # 0: exports go with checkpoints (the trainer's call).
        self.evaluator_every = EvalSchedule(cfg.eval.interval_nimg, cfg.eval.at_nimg)
        self.exported_at: Optional[int] = None  # Images seen at the last export.
        self.evaluator = None  # Built at the first evaluation (loads detectors).
        self.grids_off_reason: Optional[str] = None  # Why grids cannot be drawn (said once).
        self.compute_record = compute_record  # () -> train.compute.ComputeRecord, recorded in every export.

    def ema_state(self, profile: str) -> dict[str, torch.Tensor]:
        """The full fp32 state of one EMA profile, shaped like the network (collective)."""
        return self.ema.full_state(profile, self.engine.module, self.engine.param_shapes)

    def export(self, nimg: int) -> list[str]:
        """Write each EMA as a network file <run_dir>/ema/ema-<kimg>-<profile>.safetensors (collective), plus
        sample grids of the last profile (rank 0)."""
        paths = []
        self.exported_at = nimg
        for i, profile in enumerate(self.ema.exported):
            state = self.ema_state(profile)
            path = self.path(nimg, profile)
            if dist.is_main():
                meta = {
                    "source": "ect_scale",
                    "nimg": nimg,
                    "ema": profile,
                    "encoder": self.encoder.describe(),
                    "config": to_dict(self.ect_cfg),
                }
                if self.compute_record is not None:
                    meta["compute"] = self.compute_record().to_meta()
                save_network_file(path, state, self.network_cfg, meta=meta, dtype=self.export_dtype)
                if i == len(self.ema.exported) - 1:
                    self.write_sample_grids(profile, state, nimg)
            paths.append(path)
        dist.barrier()
        return paths

    def path(self, nimg: int, profile: str) -> str:
        return os.path.join(self.run_dir, "ema", f"ema-{nimg // 1000:07d}-{profile}.safetensors")

    def after_resume(self, nimg: int, batch_size: int) -> list[str]:
        """After resuming at `nimg` (collective): write the exports due at `nimg` that the interrupted run did not
        write, e.g. after a kill between a checkpoint's commit and its export with `ema.export_nimg: 0`. The EMAs
        and counters were restored bit for bit, so the files equal an uninterrupted run's."""
        due = self.every.nimg == 0 or self.every.due(nimg - batch_size, nimg)  # 0: every checkpoint had one.
        if nimg <= 0 or not due:
            return []
        missing = dist.broadcast_object(self.missing(nimg) if dist.is_main() else None)
        if not missing:
            self.exported_at = nimg
            return []
        self.monitor.print(
            f"ema: writing the exports at {nimg:,} images that the interrupted run did not write ({', '.join(missing)})"
        )
        return self.export(nimg)

    def missing(self, nimg: int) -> list[str]:
        """Profiles without an export at `nimg` (no file, an unreadable one, or one of other images: names count
        kimg, so exports less than 1000 images apart share a name)."""
        out = []
        for profile in self.ema.exported:
            try:
                with open(self.path(nimg, profile), "rb") as f:
                    header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
                ok = int(json.loads(header["__metadata__"]["ect_scale.meta"])["nimg"]) == nimg
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                out.append(profile)
        return out

    def write_sample_grids(self, profile: str, state: dict, nimg: int) -> None:
        """PNG grids in <run_dir>/samples and TensorBoard images `Samples/<sampler>/<profile>` (rank 0)."""
        from ect_scale.eval.grids import can_decode, sample_grids, save_png

        if self.grid_samples <= 0:
            return
        reason = can_decode(self.encoder)
        if reason is not None:
            if self.grids_off_reason is None:
                self.monitor.print(f"Sample grids off: {reason}. Set data.vae to a local SD-VAE directory.")
                self.grids_off_reason = reason
            return
        net = Precond(self.network_cfg)
        net.load_state_dict(state)
        kimg = nimg // 1000
        folder = os.path.join(self.run_dir, "samples")
        self.monitor.print(
            f"samples: drawing {self.grid_samples} samples of EMA {profile} for the grids in {folder} ..."
        )
        t0 = time.time()
        for name, grid in sample_grids(
            net, self.encoder, self.ect_cfg, num=self.grid_samples, device=dist.device()
        ).items():
            if grid.shape[0] != 3:  # The encoder did not decode to RGB (e.g. a test encoder): nothing to show.
                continue
            save_png(grid, os.path.join(folder, f"{name}-{kimg:07d}-{profile}.png"))
            self.monitor.add_images(f"Samples/{name}/{profile}", grid.unsqueeze(0), nimg)
        self.monitor.print(f"samples: done in {time.time() - t0:.1f} s")

    def evaluate(self, nimg: int, extra_scalars: Optional[dict[str, float]] = None) -> dict[str, float]:
        """In-loop FID / FD of each EMA at the configured step counts (all ranks share the work). `extra_scalars`
        (e.g. the run's compute so far) go into the same record."""
        from ect_scale.eval import InLoopEvaluator

        device = dist.device()
        if self.evaluator is None:
            self.evaluator = InLoopEvaluator(self.eval_cfg, self.ect_cfg, self.encoder, device)
        results: dict[str, float] = {}
        for profile in self.ema.exported:
            net = Precond(self.network_cfg).to(device)
            net.load_state_dict(self.ema_state(profile))
            results.update(self.evaluator.run({profile: net.eval()}, nimg))
            for name, grid in self.evaluator.last_grids.items():
                self.monitor.add_images(name, grid if grid.ndim == 4 else grid.unsqueeze(0), nimg)
            del net
        results.update(extra_scalars or {})
        self.monitor.log(nimg, results, status=False)  # Rank 0: TensorBoard + stats.jsonl on the kimg axis.
        return results
