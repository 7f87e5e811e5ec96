"""`slow` means over SLOW_S seconds: after a run, every test that took longer (setup + call + teardown, as pytest's
--durations reports them) without the `slow` marker fails the session, named with its time. Tests marked slow that
ran in under half of SLOW_S are listed, so the fast subset can take them back.

ECT_SCALE_SLOW_S changes the threshold; ECT_SCALE_SLOW_S=0 turns the check off (a machine loaded by other jobs).
Under pytest-xdist with N workers the threshold is N x SLOW_S (each test shares the cores with N - 1 others).
ECT_SCALE_DURATIONS=<file> writes every test's seconds and marker there as JSON."""

import json
import os
from collections import defaultdict

import pytest

SLOW_S = 10.0


class DurationCheck:
    def __init__(self, limit: float, path: str):
        self.limit, self.path = limit, path
        self.seconds: dict[str, float] = defaultdict(float)
        self.slow: set[str] = set()

    def pytest_runtest_logreport(self, report):  # (Under pytest-xdist these arrive from the workers.)
        self.seconds[report.nodeid] += report.duration
        if "slow" in report.keywords:
            self.slow.add(report.nodeid)

    def over(self) -> list[tuple[str, float]]:
        """Tests over the threshold without the marker, longest first."""
        if self.limit <= 0:
            return []
        found = [(n, s) for n, s in self.seconds.items() if s > self.limit and n not in self.slow]
        return sorted(found, key=lambda x: -x[1])

    def pytest_sessionfinish(self, session):
        if self.path:
            with open(self.path, "w") as f:
                rows = {n: {"seconds": round(s, 2), "slow": n in self.slow} for n, s in self.seconds.items()}
                json.dump(rows, f, indent=1)
        if self.over() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if self.limit <= 0:
            return
        over = self.over()
        if over:
            terminalreporter.section(f"tests over {self.limit:g} s without the slow marker", red=True)
            for nodeid, seconds in over:
                terminalreporter.line(f"{seconds:7.1f} s  {nodeid}  (mark it @pytest.mark.slow, or make it faster)")
        quick = sorted((n, s) for n, s in self.seconds.items() if n in self.slow and s < self.limit / 2)
        if quick:
            terminalreporter.section(f"marked slow, ran in under {self.limit / 2:g} s", yellow=True)
            for nodeid, seconds in quick:
                terminalreporter.line(f"{seconds:7.1f} s  {nodeid}")


def workers(config) -> int:
    """pytest-xdist's worker count (-n), 1 without it."""
    n = config.getoption("numprocesses", None) if config.pluginmanager.hasplugin("xdist") else None
    if n in (None, 0):
        return 1
    return (os.cpu_count() or 1) if isinstance(n, str) else int(n)


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # A pytest-xdist worker: the controlling process checks the whole run.
        return
    # With N workers on the machine each test shares the cores with N - 1 others: N x the threshold.
    limit = float(os.environ.get("ECT_SCALE_SLOW_S", SLOW_S)) * workers(config)
    config.pluginmanager.register(DurationCheck(limit, os.environ.get("ECT_SCALE_DURATIONS", "")), "duration-check")
