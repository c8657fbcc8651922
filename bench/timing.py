"""Timing primitives: per-call nanosecond samples, medians and p99s, and the machine they came from.

Operations being compared are timed interleaved (one call of each per round, the order
shuffled every round) rather than one after the other, so that load from other processes
on a shared machine hits every operation alike and the ratio of medians stays meaningful
even when absolute times drift.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from xboot.device.simulate import percentile as nearest_rank


@dataclass(frozen=True)
class Stats:
    """Summary of one operation's samples, in microseconds."""

    n: int
    median_us: float
    p99_us: float
    min_us: float
    mean_us: float

    @classmethod
    def of(cls, samples_ns: list[int]) -> Stats:
        ordered = sorted(samples_ns)
        return cls(
            n=len(ordered),
            median_us=statistics.median(ordered) / 1000,
            p99_us=percentile(ordered, 99) / 1000,
            min_us=ordered[0] / 1000,
            mean_us=statistics.fmean(ordered) / 1000,
        )

    def as_dict(self) -> dict[str, float | int]:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def percentile(samples: list[int] | list[float], pct: float) -> float:
    """Nearest-rank percentile (the one `xboot simulate` reports); NaN when nothing was measured."""
    return float(nearest_rank(samples, pct)) if samples else float("nan")


def interleaved(
    operations: dict[str, Callable[..., object]],
    iterations: int,
    warmup: int,
    prepare: dict[str, Callable[[], object]] | None = None,
) -> dict[str, Stats]:
    """Time each operation `iterations` times, in rounds of one call each (in shuffled order), after `warmup` rounds.

    `prepare[name]`, when given, runs untimed before each call of `name` and its result is
    passed in: a fresh request object reaches the operation without its construction being timed.
    """
    prepare = prepare or {}
    samples: dict[str, list[int]] = {name: [] for name in operations}
    order = list(operations)
    shuffler = random.Random(0)
    for round_number in range(warmup + iterations):
        shuffler.shuffle(order)  # no operation always runs right after the same one (an fsync leaves caches cold)
        for name in order:
            operation = operations[name]
            make = prepare.get(name)
            if make is None:
                start = time.perf_counter_ns()
                operation()
            else:
                argument = make()
                start = time.perf_counter_ns()
                operation(argument)
            elapsed = time.perf_counter_ns() - start
            if round_number >= warmup:
                samples[name].append(elapsed)
    return {name: Stats.of(values) for name, values in samples.items()}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine() -> dict[str, object]:
    import cryptography

    openssl_cli = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=False).stdout.strip()
    from cryptography.hazmat.backends.openssl.backend import backend

    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cryptography": cryptography.__version__,
        "cryptography_openssl": backend.openssl_version_text(),
        "openssl_cli": openssl_cli,
    }
