"""The k factor of benchmarks/distill_compare.py: where a method's seed-mean curve reaches ECT's 2-step FD, in
units of ECT's training compute, and its bootstrap over seeds."""

import math

import numpy as np

from tests.conftest import load_script

dc = load_script("benchmarks/distill_compare.py")


def test_crossing_interpolates_in_log_compute_and_flags_the_ends():
    compute = np.array([1.0, 2.0, 4.0, 8.0])
    metric = np.array([30.0, 20.0, 10.0, 5.0])
    assert math.isclose(dc.crossing(compute, metric, 15.0), 2 * math.sqrt(2))  # Halfway in log compute.
    assert math.isclose(dc.crossing(compute, metric, 20.0), 2.0)
    assert dc.crossing(compute, metric, 40.0) == -math.inf  # Already at the smallest budget.
    assert dc.crossing(compute, metric, 1.0) == math.inf  # Never within the budgets tried.


def test_k_factor_and_bootstrap_over_seeds():
    ect = np.array([14.0, 15.0, 16.0])  # ECT's 2-step FD over 3 seeds, at compute 4.
    compute = np.array([2.0, 4.0, 8.0, 16.0])
    cd = np.array([[40.0, 25.0, 15.0, 12.0], [42.0, 27.0, 15.0, 11.0]])  # Reaches 15 exactly at compute 8.
    assert math.isclose(dc.k_factor(ect, 4.0, compute, cd), 2.0)
    boot = dc.bootstrap_k(ect, 4.0, compute, cd, n=300)
    assert boot.shape == (300,) and np.all((boot >= 1.0) & (boot <= 4.0))
    text = dc.describe_k(2.0, boot, 0.5, 4.0)
    assert text.startswith("2.00x (5-95 % bootstrap interval over seeds [")
    never = dc.describe_k(math.inf, np.full(10, math.inf), 0.5, 4.0)
    assert never.startswith("never within the budgets tried (> 4.00x)") and "100% of resamples never cross" in never


def test_duplicate_exports_of_two_runs_are_paired():
    row = dict(method="cd", seed=0, nimg=15360, kind="own")
    rows = [{**row, "run": "cd-s0", "fd2": 15.8}, {**row, "run": "cd-x0.5-s0", "fd2": 15.8}, {**row, "kind": "shared"}]
    assert dc.duplicates(rows) == {("cd-s0", "cd-x0.5-s0", 15360): (15.8, 15.8)}


def test_reached_looks_only_at_budgets_up_to_by():
    def row(method, seed, budget, fd2):
        return dict(method=method, seed=seed, budget=budget, fd2=fd2, train_flops=budget, kind="own")

    rows = [row("ect", s, 1.0, 17.0) for s in (0, 1)]
    rows += [row("ecd", s, b, fd) for s in (0, 1) for b, fd in ((0.5, 26.0), (1.0, 19.0), (2.0, 15.6))]
    assert dc.reached(rows, "ecd") and dc.reached(rows, "ecd", by=2.0)
    assert not dc.reached(rows, "ecd", by=1.0)  # A re-run that already has 2x must not stop the ladder at 0.5x.
    assert not dc.reached(rows, "cd")
