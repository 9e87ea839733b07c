"""Expansion: the expander writes new instructions like the hard seeds of each task (few-shot from them),
validated and deduplicated against the pool and each other. Counts per task follow the task ratios
(renormalised over the tasks that have hard seeds), or without ratios (balancing off) the hard set's own
task distribution."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from typing import Any

from tapir_exp.dedup import NearDuplicateIndex, words
from tapir_exp.prompts import render
from tapir_exp.prompts.parsers import parse_instructions
from tapir_exp.records import Example

PER_REQUEST = 5  # instructions asked for per expander call
MIN_WORDS, MAX_WORDS = 3, 300


def _slug(task: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", task.lower()).strip("-")


def plan_counts(hard: list[Example], ratios: Mapping[str, float] | None, total: int) -> dict[str, int]:
    """How many new instructions per task: ``total`` spread over tasks with hard seeds by ratio (``ratios``
    None: in proportion to the hard seeds per task)."""
    from collections import Counter

    seeds = Counter(ex.task or "Others" for ex in hard)
    if not seeds or total <= 0:
        return {}
    weights = {t: (float(ratios.get(t, 0.0)) if ratios else float(n)) for t, n in seeds.items()}
    if sum(weights.values()) <= 0:
        weights = dict.fromkeys(seeds, 1.0)
    s = sum(weights.values())
    exact = {t: total * w / s for t, w in weights.items()}
    counts = {t: int(v) for t, v in exact.items()}
    for t in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[: total - sum(counts.values())]:
        counts[t] += 1
    return {t: c for t, c in sorted(counts.items()) if c > 0}


def validate(text: str) -> str | None:
    """Why a candidate instruction is unusable, or None."""
    n = len(words(text))
    if n < MIN_WORDS:
        return "too short"
    if n > MAX_WORDS:
        return "too long"
    return None


def expand_hard_seeds(hard: list[Example], pool: list[Example], oracle: Any, *, ratios: Mapping[str, float] | None,
                      total: int, shots: int = 3, threshold: float = 0.7, max_attempts_factor: int = 2,
                      seed: int = 0, step: str = "expand", rnd: int = 0,
                      failure_budget: float | None = None) -> tuple[list[Example], dict[str, Any]]:
    """New examples (no responses yet: the teacher answers them next) with ``source='expanded'``."""
    rng = random.Random(f"{seed}/{rnd}")
    wanted = plan_counts(hard, ratios, total)
    by_task: dict[str, list[Example]] = {}
    for ex in hard:
        by_task.setdefault(ex.task or "Others", []).append(ex)
    index = NearDuplicateIndex(threshold)
    for ex in pool:
        index.add(ex.prompt)
    accepted: dict[str, list[Example]] = {t: [] for t in wanted}
    rejected = {"duplicate": 0, "invalid": 0}
    requests_sent = 0
    for attempt in range(max(1, max_attempts_factor)):
        missing = {t: n - len(accepted[t]) for t, n in wanted.items() if len(accepted[t]) < n}
        if not missing:
            break
        requests, meta = [], []
        for task, n in missing.items():
            for j in range(math.ceil(n / PER_REQUEST)):
                seeds = rng.sample(by_task[task], min(shots, len(by_task[task])))
                examples = "\n".join(f"{i + 1}. {s.prompt}" for i, s in enumerate(seeds))
                prompt = render("expand", task=task, examples=examples, n=str(min(PER_REQUEST, n)))
                requests.append(oracle.request("expander", [{"role": "user", "content": prompt}],
                                               id=f"expand/r{rnd}/{_slug(task)}/{attempt}/{j}",
                                               seed=attempt * 1000 + j))
                meta.append((task, [s.id for s in seeds]))
        requests_sent += len(requests)
        results = oracle.chat_many("expander", requests, step=step, rnd=rnd, failure_budget=failure_budget)
        for (task, seed_ids), res in zip(meta, results, strict=True):
            if not res.ok:
                continue
            for text in parse_instructions(res.text, PER_REQUEST * 2):
                if len(accepted[task]) >= wanted[task]:
                    break
                if validate(text):
                    rejected["invalid"] += 1
                    continue
                if index.duplicate_of(text) is not None:
                    rejected["duplicate"] += 1
                    continue
                index.add(text)
                k = len(accepted[task])
                accepted[task].append(Example(
                    id=f"exp-r{rnd}-{_slug(task)}-{k}", instruction=text, task=task, source="expanded",
                    meta={"seeds": seed_ids, "expanded_round": rnd}))
    new = [ex for t in sorted(accepted) for ex in accepted[t]]
    return new, {"wanted": sum(wanted.values()), "accepted": len(new), "requests": requests_sent,
                 "rejected_duplicate": rejected["duplicate"], "rejected_invalid": rejected["invalid"],
                 "wanted_by_task": wanted, "by_task": {t: len(v) for t, v in accepted.items()}}
