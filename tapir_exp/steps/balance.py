"""Task-aware rebalancing: resample a set of examples to target task ratios.

Labels over their quota are downsampled without replacement; labels under it are repeated (every item
once more before any item a third time). Ratios are renormalised over the labels actually present, so a
missing label's share goes to the others in proportion. Without ratios (balancing off) the target is the
set's own task distribution: a proportional draw, equal to it within rounding.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Mapping

from tapir_exp.records import Example


def distribution(examples: list[Example]) -> dict[str, int]:
    return dict(sorted(Counter(ex.task or "unlabelled" for ex in examples).items(), key=lambda kv: (-kv[1], kv[0])))


def target_counts(ratios: Mapping[str, float], present: set[str], n: int) -> dict[str, int]:
    """Split ``n`` over the present labels by ratio (largest remainder, deterministic)."""
    weights = {lab: float(ratios.get(lab, 0.0)) for lab in sorted(present)}
    total = sum(weights.values())
    if total <= 0:  # none of the present labels has a ratio: spread evenly
        weights = dict.fromkeys(weights, 1.0)
        total = float(len(weights))
    exact = {lab: n * w / total for lab, w in weights.items()}
    counts = {lab: int(v) for lab, v in exact.items()}
    short = n - sum(counts.values())
    for lab in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[:short]:
        counts[lab] += 1
    return counts


def resample(examples: list[Example], ratios: Mapping[str, float] | None, n: int,
             rng: random.Random) -> list[Example]:
    """``n`` examples at the target ratios (``ratios=None``: at the examples' own task distribution)."""
    if n <= 0 or not examples:
        return []
    by_task: dict[str, list[Example]] = {}
    for ex in examples:
        by_task.setdefault(ex.task or "Others", []).append(ex)
    if ratios is None:
        ratios = {lab: float(len(items)) for lab, items in by_task.items()}
    out: list[Example] = []
    for lab, k in target_counts(ratios, set(by_task), n).items():
        out.extend(_take(by_task[lab], k, rng))
    rng.shuffle(out)
    return out


def _take(items: list[Example], k: int, rng: random.Random) -> list[Example]:
    """k items: without replacement when enough, else whole copies plus a sample for the remainder."""
    if k <= len(items):
        return rng.sample(items, k)
    reps, rest = divmod(k, len(items))
    out = []
    for rep in range(reps):
        out.extend(items if rep == 0 else [_repeat(ex, rep) for ex in items])
    out.extend(_repeat(ex, reps) for ex in rng.sample(items, rest))
    return out


def _repeat(ex: Example, rep: int) -> Example:
    dup = copy.deepcopy(ex)
    dup.meta["repeat_of"] = ex.id
    dup.id = f"{ex.id}#r{rep}"
    return dup
