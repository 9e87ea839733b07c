"""Win rate, its standard error and the length-controlled win rate.

Conventions follow alpaca_eval: a preference in [1, 2] per item, 2 meaning the evaluated model's output is
better, ties 1.5; win_rate = mean(preference - 1) * 100; standard error of the mean with ddof=1 (pandas'
``sem``). The length-controlled (LC) win rate is alpaca_eval's GLM (see :func:`length_controlled_win_rate`),
fitted the way alpaca_eval fits it (L1 logistic regression on soft labels, regularisation chosen by 5-fold
grouped cross-validation on the continuous log loss) and tested equal to alpaca_eval's own function.

Two formulas: ``minimal`` (length term + constant) works for any instruction set. ``v1`` (alpaca_eval's
default, the one the leaderboard reports) adds a per-instruction difficulty term and regularises towards
alpaca_eval's annotations of two length-gamed baselines; both come from alpaca_eval's ``df_gamed.csv``, which
alpaca_eval downloads from the hub at run time. We never download: with ``eval.alpaca_eval.lc.gamed_annotations``
pointing at a copy of that file (and the official 805 instructions in their order) the LC win rate is the
leaderboard's; without it, ``minimal``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapir_exp.errors import DataError


def win_rate(preferences: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [p - 1.0 for p in preferences if p is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean * 100, None
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean * 100, math.sqrt(var / len(vals)) * 100


GAMED_COLUMNS = ("index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline")


@dataclass(frozen=True)
class GamedAnnotations:
    """alpaca_eval's ``df_gamed.csv``: the difficulty of each official instruction (by its position in the
    805-instruction set) and annotations of gamed baselines that the v1 GLM is regularised towards."""

    difficulty: dict[int, float]
    rows: list[tuple[float, float, float, float]]  # (preference in [0, 1], std_delta_len, difficulty, not_gamed)

    @classmethod
    def load(cls, path: str | Path) -> GamedAnnotations:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = [c for c in GAMED_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(path, "line 1", missing[0], "expected alpaca_eval's df_gamed.csv columns "
                                    + ", ".join(GAMED_COLUMNS))
                difficulty: dict[int, float] = {}
                rows = []
                for n, rec in enumerate(reader, 2):
                    field = "index"
                    try:
                        idx = int(rec["index"])
                        field = "instruction_difficulty"
                        diff = float(rec["instruction_difficulty"])
                        field = "std_delta_len"
                        delta = float(rec["std_delta_len"])
                        field = "preference"
                        pref = float(rec["preference"]) if rec["preference"] not in ("", "nan", "NaN") else None
                        field = "not_gamed_baseline"
                        not_gamed = {"true": 1.0, "false": 0.0}[rec["not_gamed_baseline"].strip().lower()]
                    except (ValueError, KeyError, AttributeError):
                        raise DataError(path, f"line {n}", field, "expected a number (True/False for "
                                        "not_gamed_baseline)") from None
                    difficulty.setdefault(idx, diff)
                    if pref is not None:
                        rows.append((pref, delta, diff, not_gamed))
        except FileNotFoundError as e:
            raise DataError(path, None, None, "file not found (eval.alpaca_eval.lc.gamed_annotations)") from e
        return cls(difficulty, rows)


# alpaca_eval's names of the two GLM formulas (its get_length_controlled_winrate's glm_name)
LC_FORMULAS = {"minimal": "minimal", "v1": "length_controlled_v1"}


@dataclass(frozen=True)
class LengthControlled:
    win_rate: float
    standard_error: float | None
    glm: str  # "minimal" or "v1"
    C: float  # the regularisation the fit used

    @property
    def formula(self) -> str:
        return LC_FORMULAS[self.glm]


def length_controlled_win_rate(preferences: Sequence[float | None], model_lengths: Sequence[int],
                               baseline_lengths: Sequence[int], *, gamed: GamedAnnotations | None = None,
                               indices: Sequence[int] | None = None, regularize_to_baseline: float = 0.2,
                               cv_folds: int = 5, C: float = 100.0) -> LengthControlled | None:
    """LC win rate in percent; None when fewer than 2 items were judged.

    GLM: logit P(model wins) = w1 * tanh(delta / std(delta)) [+ w2 * difficulty] + w3, with delta = baseline
    length - model length in characters (std with ddof=1 over all items). Each judged item enters once as a
    win weighted by its preference and once as a loss weighted by the rest; L1 logistic regression (liblinear,
    no separate intercept: the constant is a feature). The regularisation C is chosen among
    logspace(-4, 4, 10) by ``cv_folds``-fold cross-validation grouped by item on the soft log loss; with fewer
    judged items than folds, C is fixed (``C``). ``gamed`` switches to the v1 formula: a difficulty per item
    (``indices``: the items' positions in the official instruction set) and the gamed baselines' annotations
    added to the training set with weight ``regularize_to_baseline / 2``. The LC win rate is the mean
    prediction over the items with delta = 0; its standard error is the sem of those predictions — under
    ``minimal`` every item has the same prediction (length term 0, constant 1), so that sem is 0 up to rounding
    (alpaca_eval prints ~1e-16): it is reported as not available (None), not as a number."""
    import numpy as np

    n = len(preferences)
    delta = np.array([b - m for m, b in zip(model_lengths, baseline_lengths, strict=True)], dtype=float)
    if n != len(delta):
        raise ValueError("preferences and lengths differ in length")
    judged = [i for i, p in enumerate(preferences) if p is not None]
    if len(judged) < 2:
        return None
    std = delta.std(ddof=1) if n > 1 else 0.0
    length_term = np.tanh(delta / std) if std > 0 else np.zeros(n)
    ones = np.ones(n)
    if gamed is None:
        features = np.column_stack([length_term, ones])
        test = np.column_stack([np.zeros(n), ones])
        weight = np.ones(len(judged))
        x, y = features[judged], np.array([preferences[i] - 1.0 for i in judged])
    else:
        indices = list(range(n)) if indices is None else list(indices)
        unknown = [i for i in indices if i not in gamed.difficulty]
        if unknown:
            raise ValueError(f"instruction {unknown[0]} has no difficulty in the gamed annotations: the v1 LC "
                             "formula needs alpaca_eval's official instructions in their order")
        diff = np.array([gamed.difficulty[i] for i in indices], dtype=float)
        features = np.column_stack([length_term, diff, ones])
        test = np.column_stack([np.zeros(n), diff, ones])
        g = np.array([[np.tanh(r[1]), r[2], r[3]] for r in gamed.rows], dtype=float).reshape(-1, 3)
        gp = np.array([r[0] for r in gamed.rows], dtype=float)
        gw = np.array([1.0 if r[3] else regularize_to_baseline / 2 for r in gamed.rows])
        # the gamed rows come first, as alpaca_eval concatenates them (the fold assignment depends on order)
        x = np.vstack([g, features[judged]])
        y = np.concatenate([gp, [preferences[i] - 1.0 for i in judged]])
        weight = np.concatenate([gw, np.ones(len(judged))])
    glm = "minimal" if gamed is None else "v1"
    if (y * weight).sum() == 0 or ((1 - y) * weight).sum() == 0:
        # all wins or all losses: one class has no weight and there is nothing to regress (a fit would return
        # its prior, 50 %); the LC win rate is the raw one
        return LengthControlled(float(np.mean([preferences[i] - 1.0 for i in judged]) * 100),
                                None if gamed is None else 0.0, glm, float(C))
    best_c = _choose_c(x, y, weight, cv_folds) if cv_folds > 1 and len(y) >= cv_folds else C
    model = _fit_soft_logistic(x, y, weight, best_c)
    pred = model.predict_proba(test)[:, 1]
    se = float(pred.std(ddof=1) / math.sqrt(n) * 100) if n > 1 and gamed is not None else None
    return LengthControlled(float(pred.mean() * 100), se, glm, float(best_c))


def _fit_soft_logistic(x: Any, y: Any, weight: Any, c: float) -> Any:
    """Logistic regression on probabilities: rows duplicated as label 1 (weight y*w) and label 0 (weight (1-y)*w)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", fit_intercept=False, random_state=123)
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    model.fit(np.vstack([x, x]), labels, sample_weight=np.concatenate([y * weight, (1 - y) * weight]))
    return model


def _choose_c(x: Any, y: Any, weight: Any, folds: int) -> float:
    """The C with the best mean held-out soft log loss over grouped folds (both copies of an item together),
    ties to the smaller C — as sklearn's LogisticRegressionCV in alpaca_eval's fit."""
    import numpy as np
    from sklearn.model_selection import GroupKFold

    cs = np.logspace(-4, 4, 10)
    groups = np.concatenate([np.arange(len(y)), np.arange(len(y))])
    dup_x, dup_w = np.vstack([x, x]), np.concatenate([weight, weight])
    target = np.concatenate([y, y])  # both copies are scored against the item's probability
    scores = np.zeros((folds, len(cs)))
    for f, (train, held) in enumerate(GroupKFold(n_splits=folds).split(dup_x, groups=groups)):
        tr = np.unique(train % len(y))  # rows of the original items in this training split
        for j, c in enumerate(cs):
            q = np.clip(_fit_soft_logistic(x[tr], y[tr], weight[tr], c).predict_proba(dup_x[held])[:, 1],
                        1e-15, 1 - 1e-15)
            t = target[held]
            scores[f, j] = np.mean((t * np.log(q) + (1 - t) * np.log(1 - q)) * dup_w[held])
    return float(cs[int(np.argmax(scores.mean(axis=0)))])
