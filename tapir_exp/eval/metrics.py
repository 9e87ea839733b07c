"""Win rate, its standard error and the length-controlled win rate.

Conventions follow alpaca_eval: a preference in [1, 2] per item, 2 meaning the evaluated model's output is
better, ties 1.5; win_rate = mean(preference - 1) * 100; standard error of the mean with ddof=1 (pandas'
``sem``). The length-controlled (LC) win rate follows alpaca_eval's GLM with its "minimal" formula (length term +
constant); see :func:`length_controlled_win_rate`. alpaca_eval's default GLM adds a per-instruction
difficulty term estimated from its own 805-instruction leaderboard data (downloaded from the hub) and picks
the regularisation by 5-fold CV; neither applies to other instruction sets offline, so both are left out.
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


def length_controlled_win_rate(preferences: Sequence[float | None], model_lengths: Sequence[int],
                               baseline_lengths: Sequence[int], C: float = 100.0) -> float | None:
    """LC win rate in percent (None when fewer than 2 judged items or no length variation).

    GLM: logit P(model wins) = w0 + w1 * tanh(delta / std(delta)), delta = baseline length - model length
    (characters; std with ddof=1), fitted by L1 logistic regression (liblinear, C=100, no separate
    intercept: the constant is a feature) on soft labels, each item entered once as a win weighted by its
    preference and once as a loss weighted by the rest. The LC win rate is the prediction at delta = 0."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rows = [(p - 1.0, b - m) for p, m, b in zip(preferences, model_lengths, baseline_lengths, strict=True)
            if p is not None]
    if len(rows) < 2:
        return None
    y = np.array([r[0] for r in rows], dtype=float)
    delta = np.array([r[1] for r in rows], dtype=float)
    std = delta.std(ddof=1)
    x = np.tanh(delta / std) if std > 0 else np.zeros_like(delta)
    features = np.column_stack([x, np.ones_like(x)])
    both = np.vstack([features, features])
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    weights = np.concatenate([y, 1 - y])
    if weights[labels == 1].sum() == 0 or weights[labels == 0].sum() == 0:
        return float(y.mean() * 100)  # all wins or all losses: nothing to regress
    model = LogisticRegression(C=C, penalty="l1", solver="liblinear", fit_intercept=False, random_state=123)
    model.fit(both, labels, sample_weight=weights)
    return float(model.predict_proba(np.array([[0.0, 1.0]]))[0, 1] * 100)
