"""Win rate, its standard error and the length-controlled win rate.

Conventions follow alpaca_eval: a preference in [1, 2] per item, 2 meaning the evaluated model's output is
better, ties 1.5; win_rate = mean(preference - 1) * 100; standard error of the mean with ddof=1 (pandas'
``sem``). The length-controlled (LC) win rate follows alpaca_eval's GLM idea: fit
P(model wins) = sigmoid(theta + phi * tanh(len_delta / std(len_delta))) and report the win rate predicted
with the length term set to zero. alpaca_eval's full GLM also has a per-instruction difficulty term fitted
across many models' annotations; with one model there is nothing to fit it on, so it is left out here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def win_rate(preferences: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [p - 1.0 for p in preferences if p is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean * 100, None
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean * 100, math.sqrt(var / len(vals)) * 100


def length_controlled_win_rate(preferences: Sequence[float], model_lengths: Sequence[int],
                               baseline_lengths: Sequence[int], l2: float = 1e-3, steps: int = 500) -> float | None:
    """LC win rate in percent (None when fewer than 2 judged items)."""
    rows = [(p - 1.0, m - b) for p, m, b in zip(preferences, model_lengths, baseline_lengths, strict=True)
            if p is not None]
    if len(rows) < 2:
        return None
    deltas = [d for _, d in rows]
    mean_d = sum(deltas) / len(deltas)
    std = math.sqrt(sum((d - mean_d) ** 2 for d in deltas) / len(deltas)) or 1.0
    xs = [math.tanh(d / std) for d in deltas]
    ys = [y for y, _ in rows]
    theta = phi = 0.0
    # Newton's method on the L2-regularised logistic log-likelihood with soft targets (2 parameters).
    for _ in range(steps):
        g0 = g1 = h00 = h01 = h11 = 0.0
        for x, y in zip(xs, ys, strict=True):
            p = 1.0 / (1.0 + math.exp(-(theta + phi * x)))
            g0 += p - y
            g1 += (p - y) * x
            w = p * (1 - p)
            h00 += w
            h01 += w * x
            h11 += w * x * x
        g0 += l2 * theta
        g1 += l2 * phi
        h00 += l2
        h11 += l2
        det = h00 * h11 - h01 * h01
        if abs(det) < 1e-12:
            break
        d0 = (h11 * g0 - h01 * g1) / det
        d1 = (h00 * g1 - h01 * g0) / det
        theta, phi = theta - d0, phi - d1
        if abs(d0) + abs(d1) < 1e-10:
            break
    return 100.0 / (1.0 + math.exp(-theta))
