"""The ECT algorithm: schedules in images seen, the objective, explicit RNG, and samplers."""

from ect_scale.ect.distill import CDLoss, DistillNets, ECDLoss, karras_levels, ode_step
from ect_scale.ect.loss import DiffusionLoss, ECTLoss, LossOutput, pseudo_huber, weighting
from ect_scale.ect.objectives import build_objective
from ect_scale.ect.rng import SeedGenerators, derive_seed, step_generator
from ect_scale.ect.samplers import consistency_sample, draw_labels, draw_latents, generate, heun_sample
from ect_scale.ect.schedules import learning_rate, nominal_ratio, ratio_at, sample_t, stage_at, t_to_r

__all__ = [
    "CDLoss",
    "DistillNets",
    "ECDLoss",
    "karras_levels",
    "ode_step",
    "DiffusionLoss",
    "ECTLoss",
    "LossOutput",
    "build_objective",
    "pseudo_huber",
    "weighting",
    "SeedGenerators",
    "derive_seed",
    "step_generator",
    "consistency_sample",
    "draw_labels",
    "draw_latents",
    "generate",
    "heun_sample",
    "learning_rate",
    "nominal_ratio",
    "ratio_at",
    "sample_t",
    "stage_at",
    "t_to_r",
]
