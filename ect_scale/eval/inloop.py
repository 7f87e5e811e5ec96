"""In-loop evaluation: every `eval.interval_nimg` images, FID (and optionally FD_DINOv2) of each EMA at 1 and 2
steps on `eval.num_samples` samples, plus sample grids, in TensorBoard. Independent of DeepSpeed.

    evaluator = InLoopEvaluator(cfg.eval, cfg.ect, encoder, device)        # all ranks
    if evaluator.every.due(prev_nimg, nimg):
        results = evaluator.run({"ema-0.050": ema_net, ...}, nimg, writer)  # all ranks (collective)

All ranks share the work (seeds split across ranks) and get the same results back; grids are made and written
on rank 0. The nets are plain `nn.Module`s (under ZeRO-3: the gathered EMA); they are evaluated in eval mode and
returned in the mode they came in. The same seeds are used at every evaluation, so curves are not seed noise.
"""

from __future__ import annotations

import time
import warnings
from typing import Optional

import numpy as np
import torch

from ect_scale.config.ect import ECTConfig
from ect_scale.config.eval import EvalConfig
from ect_scale.eval.detectors import Detector, build_detectors
from ect_scale.eval.grids import auto_zoom, make_grid
from ect_scale.eval.pipeline import eval_mode, generated_stats
from ect_scale.eval.refs import ReferenceStats, load_reference
from ect_scale.eval.sampling import SamplerSpec, consistency_spec, sample_many
from ect_scale.eval.stats import fd_between
from ect_scale.runtime.dist import is_main, print0
from ect_scale.runtime.intervals import Interval

METRIC_TAGS = {"fid": "FID", "fd_dinov2": "FD_DINOv2", "fd_classifier": "FD_classifier"}


class InLoopEvaluator:
    """Smaller-sample FID of several nets at several step counts, on all ranks (see module docstring)."""

    def __init__(
        self,
        cfg: EvalConfig,
        ect_cfg: ECTConfig,
        encoder,
        device,
        detectors: Optional[dict[str, Detector]] = None,
        reference: Optional[ReferenceStats] = None,
    ):
        cfg.validate_files("eval")
        self.cfg, self.encoder, self.device = cfg, encoder, torch.device(device)
        self.specs: list[SamplerSpec] = [consistency_spec(n, ect_cfg.t_mid, ect_cfg.t_max) for n in sorted(cfg.steps)]
        self.reference = reference if reference is not None else load_reference(cfg.ref_stats)
        self.detectors = (
            detectors
            if detectors is not None
            else build_detectors(
                cfg.metrics,
                self.device,
                inception_path=cfg.inception_path,
                dinov2_repo=cfg.dinov2_repo,
                dinov2_path=cfg.dinov2_path,
                classifier_path=cfg.classifier_path,
            )
        )
        for metric, det in self.detectors.items():
            self.reference.require(metric, det.feature_dim)  # Fail now, not hours into training.
        self.seeds = np.arange(cfg.seed, cfg.seed + cfg.num_samples, dtype=np.int64)
        self.every = Interval(cfg.interval_nimg)
        self.history: list[dict] = []
        self.last_grids: dict[str, torch.Tensor] = {}

    def run(self, nets: dict[str, torch.nn.Module], nimg: int, writer=None) -> dict[str, float]:
        """Evaluate every net (collective). Returns e.g. {'FID/1step/ema-0.050': 12.3, ..., 'Timing/eval_sec': 41}.

        Scalars and grids go to `writer` (a SummaryWriter, or None) at global step kimg = nimg // 1000.
        """
        t0 = time.perf_counter()
        results: dict[str, float] = {}
        for net_name, net in nets.items():  # generated_stats samples in eval mode and restores the mode.
            stats = generated_stats(
                net,
                self.encoder,
                self.detectors,
                self.seeds,
                self.specs,
                self.cfg.batch_gpu,
                self.device,
                progress="none",
            )
            for spec in self.specs:
                for metric, s in stats[spec.name].items():
                    results[f"{METRIC_TAGS[metric]}/{spec.name}/{net_name}"] = self._distance(s, metric)
        self.last_grids = self.sample_grids(nets)
        results["Timing/eval_sec"] = time.perf_counter() - t0
        self._write(writer, results, nimg)
        self.history.append({"nimg": int(nimg), **results})
        print0(f"[eval] kimg {nimg / 1000:.1f}: " + "  ".join(f"{k} {v:.3f}" for k, v in results.items()))
        return results

    def _distance(self, stats, metric: str) -> float:
        try:
            return fd_between(stats, self.reference.require(metric))
        except ValueError as e:  # Non-finite samples must not end a training run.
            warnings.warn(f"in-loop {metric}: {e}; recording NaN", stacklevel=2)
            return float("nan")

    @torch.no_grad()
    def sample_grids(self, nets: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        """Rank 0: 'Samples/<n>step/<net>' -> uint8 grid [3, g*H, g*W] of the first g² seeds. {} elsewhere."""
        g = self.cfg.grid_size
        if g == 0 or not is_main():
            return {}
        seeds = self.seeds[: g * g]
        images: dict[str, list[torch.Tensor]] = {}
        for net_name, net in nets.items():
            with eval_mode(net):
                for start in range(0, len(seeds), self.cfg.batch_gpu):  # Same memory bound as the FID pass.
                    samples = sample_many(net, seeds[start : start + self.cfg.batch_gpu], self.specs, self.device)
                    for spec_name, x in samples.items():
                        images.setdefault(f"Samples/{spec_name}/{net_name}", []).append(self.encoder.decode(x).cpu())
        return {
            tag: make_grid(torch.cat(parts), cols=g, pad=2, zoom=auto_zoom(parts[0].shape[-1]))
            for tag, parts in images.items()
        }

    def _write(self, writer, results: dict[str, float], nimg: int) -> None:
        if writer is None or not is_main():
            return
        kimg = int(nimg // 1000)
        for tag, value in results.items():
            writer.add_scalar(tag, value, kimg)
        for tag, grid in self.last_grids.items():
            writer.add_image(tag, grid, kimg, dataformats="CHW")
        writer.flush()

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
