"""Numerical precision: the modes and their schedule (`modes`), ECT's signal against its rounding error
(`rounding`), the trainer's side of the schedule (`control`) and the per-stage report (`report`)."""
