"""ect_scale: Easy Consistency Tuning (ECT) of EDM2 diffusion models at cluster scale."""

__version__ = "0.1.0"
