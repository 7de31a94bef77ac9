"""Timing helpers for `benchmarks/step.py`: interleaved rounds, summary statistics, load."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Mapping

# A timed case runs one call to completion and returns None, or {part: seconds} for its parts.
Case = Callable[[], Mapping[str, float] | None]


def interleaved(
    cases: Mapping[str, Case], *, rounds: int, iters: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of every case, measured in alternating rounds.

    Every case is warmed up first. Then each round runs `iters` calls of each case, in
    order A, B, C on even rounds and C, B, A on odd ones, so that a change in machine load
    during the run hits every case alike instead of whichever happened to run last.

    Returns:
      `{case: [seconds, ...]}`, plus `{case/part: [...]}` for the parts a case reports.
    """
    if rounds < 1 or iters < 1 or warmup < 0:
        raise ValueError(
            f"`rounds` and `iters` must be >= 1 and `warmup` >= 0, got {rounds}, {iters}, {warmup}."
        )
    for case in cases.values():
        for _ in range(warmup):
            case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for _ in range(iters):
                start = time.perf_counter()
                parts = cases[name]()
                times[name].append(time.perf_counter() - start)
                for part, seconds in (parts if parts is not None else {}).items():
                    times.setdefault(f"{name}/{part}", []).append(seconds)
    return times


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median, mean, min (in milliseconds) and count of a list of durations in seconds."""
    ms = [1e3 * s for s in seconds]
    return {
        "median_ms": statistics.median(ms),
        "mean_ms": statistics.fmean(ms),
        "min_ms": min(ms),
        "n": len(ms),
    }


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or None where unavailable."""
    try:
        with open("/proc/loadavg") as f:
            one, five, fifteen = f.read().split()[:3]
        return float(one), float(five), float(fifteen)
    except (OSError, ValueError):
        return None


def faulted_bytes(call: Callable[[], object], repeats: int = 3) -> float:
    """Bytes of fresh pages per `call()`: its minor page faults times the page size.

    Memory that a runtime maps for a step and unmaps afterwards is faulted in (and zeroed
    by the kernel) again on every step; this measures that cost.
    """
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        call()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return faults * resource.getpagesize() / repeats


def cpu_count() -> int:
    """The number of cores this process may run on (its affinity mask, e.g. under taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
