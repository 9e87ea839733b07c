"""Curriculum over rounds: the hard fraction alpha_r of round r's training mix, the mix size, and the mix
itself (hard and easy parts, each balanced to the task ratios when balancing is on).

``curriculum.single_round: true`` is the ablation "no curriculum": one round, hard and easy items alike
(``mix='all'``), trained on as many examples as the whole schedule would have been (the sum of the per-round
sizes over ``rounds``)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from tapir_exp.errors import ConfigError
from tapir_exp.records import Example


def alpha_for_round(cur: Mapping[str, Any], r: int) -> float:
    """Hard fraction of round ``r`` (1-based) under ``curriculum.schedule``."""
    rounds = int(cur["rounds"])
    schedule = cur.get("schedule", "linear")
    if schedule == "constant":
        alpha = float(cur["alpha_start"])
    elif schedule == "linear":
        a0, a1 = float(cur["alpha_start"]), float(cur["alpha_end"])
        alpha = a0 if rounds == 1 else a0 + (a1 - a0) * (r - 1) / (rounds - 1)
    elif schedule == "list":
        alphas = list(cur.get("alphas") or [])
        if len(alphas) < rounds:
            raise ConfigError("curriculum.alphas", f"schedule=list needs {rounds} values (one per round), got {len(alphas)}")
        alpha = float(alphas[r - 1])
    else:
        raise ConfigError("curriculum.schedule", f"expected constant, linear or list, got {schedule!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError("curriculum", f"alpha for round {r} is {alpha}; expected a value in [0, 1]")
    return alpha


def rounds_to_run(cur: Mapping[str, Any]) -> int:
    """Rounds the pipeline runs: ``rounds``, or 1 under ``single_round``."""
    return 1 if cur.get("single_round", False) else int(cur["rounds"])


def round_plan(cur: Mapping[str, Any], r: int, available: int) -> tuple[float | None, int, str]:
    """(alpha, size, mix mode) of round ``r``; alpha is None where the mix has no hard fraction (single round).

    Under ``single_round`` the one round's size is the schedule's total, so the trained-example budget equals
    the full run's (with ``size: null`` every round takes all ``available`` items, so it is ``rounds`` times
    the round-1 candidates)."""
    if cur.get("single_round", False):
        total = sum(size_for_round(cur, k, available) for k in range(1, int(cur["rounds"]) + 1))
        return None, total, "all"
    return alpha_for_round(cur, r), size_for_round(cur, r, available), str(cur.get("mix", "curriculum"))


def size_for_round(cur: Mapping[str, Any], r: int, available: int) -> int:
    size = cur.get("size")
    if size is None:
        return available
    if isinstance(size, int | float):
        return int(size)
    sizes = list(size)
    if len(sizes) < r:
        raise ConfigError("curriculum.size", f"a list of sizes needs one per round; round {r} has none")
    return int(sizes[r - 1])


def build_mix(hard: list[Example], easy: list[Example], *, alpha: float | None, size: int, mode: str,
              resample: Any, ratios: Mapping[str, float] | None, seed: int, rnd: int) -> tuple[list[Example], dict[str, Any]]:
    """The round's training mix.

    ``mode='curriculum'``: ``round(alpha * size)`` hard items and the rest easy, each part resampled to the
    task ratios. Neither part takes more than its distinct items while the other has some to spare: a
    shortfall of hard items goes to the easy part and vice versa (a student that fails almost everything
    would otherwise train on a handful of easy items repeated dozens of times). Only when both run out are
    items repeated.
    ``mode='all'``: hard and easy together, resampled to ``size``. ``resample(items, ratios, n, rng)`` is the
    balancing function (ratios None = the items' own task distribution).
    """
    rng = random.Random(f"{seed}/mix/{rnd}")
    if mode == "all":
        everything = hard + easy
        mix = resample(everything, ratios, size, rng)
        hard_ids = {ex.id for ex in hard}
        for ex in mix:
            ex.meta["mix_part"] = "hard" if ex.meta.get("repeat_of", ex.id) in hard_ids else "easy"
        n_hard = sum(1 for ex in mix if ex.meta["mix_part"] == "hard")
        return mix, {"alpha_target": None, "alpha_actual": round(n_hard / max(1, len(mix)), 4), "hard": n_hard,
                     "easy": len(mix) - n_hard}
    if mode != "curriculum":
        raise ConfigError("curriculum.mix", f"expected curriculum or all, got {mode!r}")
    if alpha is None:
        raise ConfigError("curriculum", "mix=curriculum needs a hard fraction alpha for the round")
    n_hard = min(round_half_up(alpha * size), len(hard))
    n_easy = size - n_hard
    if n_easy > len(easy):  # too few easy items: the rest of the round is hard (repeated only if it must be)
        n_easy = len(easy)
        n_hard = size - n_easy
    hard_part = resample(hard, ratios, n_hard, rng)
    easy_part = resample(easy, ratios, n_easy, rng)
    for part, items in (("hard", hard_part), ("easy", easy_part)):
        for ex in items:  # which part of the round each trained item came from (artifacts, tests)
            ex.meta["mix_part"] = part
    mix = hard_part + easy_part
    rng.shuffle(mix)
    return mix, {"alpha_target": alpha, "alpha_actual": round(len(hard_part) / max(1, len(mix)), 4),
                 "hard": len(hard_part), "easy": len(easy_part)}


def round_half_up(x: float) -> int:
    return int(x + 0.5)


