"""Scaling-law studies of ECT runs: sweeps that train a grid of sizes x budgets x seeds, and the fits and report of a
metric (e.g. FD) against training compute.

The fits (pure numpy / scipy; matplotlib only inside `plot`; they import nothing from the package but
`ect_scale.runtime.errors`):

- `points`: `Point` (one run: size, params, seed, budget_nimg, compute_flops, costs, metrics, status, reason),
  `write_table` / `read_table` (CSV and JSON; missing and failed points kept with their reason).
- `fit`: `fit_power_law` / `fit_points` (y = a·C^(−b) or y = e + a·C^(−b), bootstrap CIs), `predict`.
- `holdout`: `seed_noise`, `select_form` (held-out error chooses the form), `holdout_largest`.
- `frontier`: `frontier`, `best_size_for`, `measured_envelope`, `compare_sizes`.
- `report`: `analyse(points, metrics, predict_at_flops)` and `write_report(analysis, out_dir)`
  (fits.json, report.md, one PNG per metric via `plot.plot_metric`).

The sweeps (`tools/scaling.py`; docs/scaling.md):

- `sweep`: the sweep file (`SweepConfig`, `load_sweep`), validated with errors that name the key and a fix.
- `plan`: `build_plan(sweep)`: the runs (resolved configs, launcher arguments) and the points of each mode.
- `runner`: `SweepRunner`: teachers, then runs one after another through the real launcher, resumable.
- `collect`: `run_state`, `collect_points`: run folders -> points (ok, missing or failed, with the reason).
- `slurm`: `write_slurm`: an array job, one task per run, through launchers/slurm_train.sbatch.
- `study`: `report_sweep`: tables, fits and plots of each mode, the modes side by side, `sweep.md`.
"""

from ect_scale.scaling.fit import Fit, Prediction, fit_points, fit_power_law, predict
from ect_scale.scaling.frontier import Frontier, best_size_for, compare_sizes, frontier, measured_envelope
from ect_scale.scaling.holdout import Holdout, SeedNoise, Selection, holdout_largest, seed_noise, select_form
from ect_scale.scaling.points import Point, read_table, write_table
from ect_scale.scaling.report import analyse, write_report

__all__ = [
    "Fit",
    "Frontier",
    "Holdout",
    "Point",
    "Prediction",
    "SeedNoise",
    "Selection",
    "analyse",
    "best_size_for",
    "compare_sizes",
    "fit_points",
    "fit_power_law",
    "frontier",
    "holdout_largest",
    "measured_envelope",
    "predict",
    "read_table",
    "seed_noise",
    "select_form",
    "write_report",
    "write_table",
]
