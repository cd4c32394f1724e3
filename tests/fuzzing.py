"""Shared settings for the property-based (Hypothesis) fuzz tests: derandomised, so CI replays the same
cases every run, and a bound on each case's time and on the test process's memory growth."""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager

from hypothesis import HealthCheck, settings

CASES = 2000  # per reader in CI
CASE_SECONDS = 5.0
GROWTH_MB = 500.0

FUZZ = settings(max_examples=CASES, derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


@contextmanager
def bounded(baseline_mb: float):
    """One fuzz case: fails if it takes over CASE_SECONDS, if the process's peak memory has grown more than
    GROWTH_MB over `baseline_mb` (taken once, before the test's first case), or if the case itself keeps
    more than GROWTH_MB resident (the peak alone cannot see growth below an earlier test's high-water mark)."""
    start, resident = time.monotonic(), resident_mb()
    yield
    took = time.monotonic() - start
    assert took < CASE_SECONDS, f"one case took {took:.1f} s"
    grown = peak_mb() - baseline_mb
    assert grown < GROWTH_MB, f"peak memory grew {grown:.0f} MB"
    kept = resident_mb() - resident
    assert kept < GROWTH_MB, f"the case kept {kept:.0f} MB resident"
