"""What a run tells its user at the start (the config table) and at the end (the summary)."""

from __future__ import annotations

import math
import os

from ect_scale.config import Config, DataConfig
from ect_scale.precision.control import precision_text
from ect_scale.train.monitor import summary_lines


def data_description(data: DataConfig) -> str:
    """The config table's data row: the manifest URL, or what synthetic data stands in for it."""
    if data.kind == "synthetic":
        return (
            f"synthetic ({data.synthetic_encoder}, {data.synthetic_resolution}px, {data.synthetic_label_dim} classes)"
        )
    return data.url


def objective_description(cfg: Config) -> str:
    e = cfg.ect
    d = cfg.distill
    if e.objective == "diffusion":
        return "diffusion (EDM2 loss, Eq. 21)"
    if e.objective == "cd":
        return (
            f"CD N={d.levels} t_min={d.t_min:g} mu={d.target_ema:g} {d.solver} teacher step, d={d.distance} "
            f"(c={e.c:g}) weighting={e.weighting}"
        )
    ect = f"ECT q={e.q:g} stage_nimg={e.stage_nimg:,} c={e.c:g} weighting={e.weighting}"
    return ect if e.objective == "ect" else f"ECD: {ect}, x_r by a {d.solver} teacher step, d={d.distance}"


def config_rows(
    cfg: Config,
    *,
    params: int,
    rounds: int,
    world_size: int,
    device_type: str,
    ema_profiles: list[str],
    resumed_nimg: int | None,
) -> list[tuple[str, str]]:
    """The rows of the table printed when a run starts."""
    engine = f"ZeRO-{cfg.engine.zero_stage} on {device_type}, precision {precision_text(cfg.engine)}" + (
        f", compiled ({cfg.engine.compile_mode})" if cfg.engine.compile else ""
    )
    o = cfg.optim
    return [
        ("run_dir", cfg.run_dir),
        ("network", f"{cfg.network.preset or 'custom'} ({params / 1e6:.1f}M params, {cfg.network.compute_dtype})"),
        ("init", cfg.init or "random (EDM2 init)"),
        ("objective", objective_description(cfg)),
        ("batch", f"{cfg.train.batch_size} = {cfg.train.batch_gpu} x {rounds} rounds x {world_size} ranks"),
        ("engine", engine),
        ("optimizer", f"Adam lr={o.lr:g} betas={tuple(o.betas)} decay_nimg={o.decay_nimg:,}"),
        ("ema", ", ".join(ema_profiles)),
        ("data", data_description(cfg.data)),
        ("duration", f"{cfg.train.total_nimg:,} images"),
        ("start", f"resumed at {resumed_nimg:,} images" if resumed_nimg is not None else "fresh start"),
    ]


def param_count(param_shapes: dict) -> int:
    return sum(math.prod(s) for s in param_shapes.values())


def run_summary(trainer, session_sec: float) -> list[str]:
    """The end-of-run lines (rank 0 prints them): images, time, speed, skips, and where the results are."""
    cfg, run_dir, state = trainer.cfg, trainer.run_dir, trainer.state
    shards = trainer.last_scalars.get("Data/corrupt_shards_skipped")
    places = [("EMAs", os.path.join(run_dir, "ema") + f"  ({', '.join(trainer.ema.exported)})")]
    if cfg.logging.sample_grid > 0:
        places.append(("samples", os.path.join(run_dir, "samples")))
    if cfg.logging.tensorboard:
        places.append(("TensorBoard", f"tensorboard --logdir {os.path.join(run_dir, 'tensorboard')}"))
    if trainer.checkpointer is not None:
        places.append(("checkpoints", trainer.checkpointer.dest.url))
    return summary_lines(
        nimg=state.nimg,
        total_nimg=cfg.train.total_nimg,
        session_nimg=state.nimg - trainer.session_start_nimg,
        session_sec=session_sec,
        elapsed_sec=state.elapsed_sec,
        skipped_steps=state.skipped_steps,
        shards_skipped=None if shards is None else int(shards),
        places=places,
    )
