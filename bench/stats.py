"""Summaries of latency samples: the figures the bench reports."""

from __future__ import annotations

import math
import statistics

#: Consecutive batches whose means give the coefficient of variation.
BATCHES = 20
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999))


def percentile(ordered: list, q: float) -> float:
    """Return the nearest-rank ``q`` quantile (0 < q <= 1) of the sorted list ``ordered``."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def batch_cv(samples: list, batches: int = BATCHES) -> float:
    """Return the coefficient of variation (stdev / mean) of the means of
    ``batches`` consecutive equal slices of ``samples`` (the remainder is dropped)."""
    size = len(samples) // batches
    if size == 0:
        return float("nan")
    means = [statistics.fmean(samples[i * size:(i + 1) * size]) for i in range(batches)]
    return statistics.pstdev(means) / statistics.fmean(means)


def summarize(samples_ns: list) -> dict:
    """Return mean, p50, p90, p99, p99.9 and max in microseconds, the sample
    count ``n`` and the batch-mean ``cv`` (a fraction), for samples in ns."""
    if not samples_ns:
        raise ValueError("no samples")
    ordered = sorted(samples_ns)
    figures = {"n": len(samples_ns), "mean": statistics.fmean(samples_ns) / 1000}
    for name, q in PERCENTILES:
        figures[name] = percentile(ordered, q) / 1000
    figures["max"] = ordered[-1] / 1000
    figures["cv"] = batch_cv(samples_ns)
    return figures


def cdf_points(samples_ns: list, points: int = 400) -> "tuple[list, list]":
    """Return ``(latencies_us, fractions)``: at most ``points`` points of the empirical CDF."""
    ordered = sorted(samples_ns)
    step = max(1, len(ordered) // points)
    picks = list(range(0, len(ordered), step)) + [len(ordered) - 1]
    return [ordered[i] / 1000 for i in picks], [(i + 1) / len(ordered) for i in picks]
