"""Interval estimates the reports and the skills world share: a proportion's Wilson interval, a mean over
seeds with its Student-t interval, and a paired difference of outcomes with its normal interval."""

from __future__ import annotations

import math

Z95 = 1.96


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval for k successes out of n."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95 % interval (Student t over seeds; None for a single seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    from scipy.stats import t

    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    return mean, float(t.ppf(0.975, n - 1)) * sd / n ** 0.5


def paired_difference(a: list[int | bool], b: list[int | bool], z: float = Z95) -> tuple[float, float, float, int]:
    """Mean of a_i - b_i and its 95 % interval (mean +- z * sd / sqrt(n)); n pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} vs {len(b)} outcomes (the pairs must match)")
    n = len(a)
    if n == 0:
        return 0.0, 0.0, 0.0, 0
    d = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n
