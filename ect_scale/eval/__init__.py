"""Distributed FID / FD_DINOv2: feature statistics, detectors from local files, reference statistics,
world-size-invariant sample generation, and the in-loop evaluator. See docs/evaluation.md."""

from ect_scale.eval.detectors import Detector, DetectorFileError, DINOv2Detector, InceptionV3Detector, build_detectors
from ect_scale.eval.inloop import InLoopEvaluator, make_grid
from ect_scale.eval.pipeline import (
    compute_metrics,
    dataset_stats,
    eval_mode,
    generated_stats,
    load_for_eval,
    parse_seeds,
)
from ect_scale.eval.progress import Progress, StageTimer
from ect_scale.eval.refs import ReferenceStats, ReferenceStatsError, load_reference, save_reference
from ect_scale.eval.sampling import SamplerSpec, consistency_spec, rank_batches, sample_many
from ect_scale.eval.stats import FeatureStats, GaussianStats, fd_between, frechet_distance, no_tf32, reduce_stats

__all__ = [
    "DetectorFileError",
    "DINOv2Detector",
    "Detector",
    "InceptionV3Detector",
    "build_detectors",
    "InLoopEvaluator",
    "make_grid",
    "compute_metrics",
    "dataset_stats",
    "eval_mode",
    "generated_stats",
    "load_for_eval",
    "parse_seeds",
    "Progress",
    "StageTimer",
    "ReferenceStats",
    "ReferenceStatsError",
    "load_reference",
    "save_reference",
    "SamplerSpec",
    "consistency_spec",
    "rank_batches",
    "sample_many",
    "FeatureStats",
    "GaussianStats",
    "fd_between",
    "frechet_distance",
    "no_tf32",
    "reduce_stats",
]
