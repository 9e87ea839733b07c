"""Model Fitting Difficulty: a judge scores the teacher's and the student's answer to the same
instruction on 1-10, in both presentation orders, and MFD = score(teacher) - score(student).

Two request formats:
- ``single``: one rating request per answer per order ("grade only Assistant 1"), both answers shown.
  Works with the log-probability scoring mode (expected rating over the rating tokens).
- ``pair``: one request per order returning ``[[s1, s2]]`` (half the calls; generative parsing only).
"""

from __future__ import annotations

import builtins
import re
import statistics
from typing import Any

from tapir_exp.prompts import render
from tapir_exp.records import Example

ORDERS = ("ts", "st")  # teacher shown first / student shown first
_PAIR = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*[,;/ ]\s*(\d+(?:\.\d+)?)\s*\]\]")


def parse_score_pair(text: str, lo: int = 1, hi: int = 10) -> tuple[float, float]:
    """``[[7, 4]]`` -> (7.0, 4.0); ValueError when absent or out of range."""
    m = _PAIR.search(text)
    if not m:
        raise ValueError(f"no [[a, b]] score pair in {text[:80]!r}")
    a, b = float(m.group(1)), float(m.group(2))
    if not (lo <= a <= hi and lo <= b <= hi):
        raise ValueError(f"scores {a}, {b} outside {lo}-{hi}")
    return a, b


def _answers(ex: Example, order: str) -> tuple[str, str]:
    teacher, student = ex.output, ex.meta.get("student", "")
    return (teacher, student) if order == "ts" else (student, teacher)


def judge_mfd(examples: list[Example], oracle: Any, *, delta: float, both_orders: bool = True,
              scoring: str | None = None, fmt: str = "single", step: str = "mfd", round: int = 0,
              failure_budget: float | None = None) -> tuple[list[Example], dict[str, Any]]:
    """Score every example; writes ``meta['judge']`` (scores per order, order disagreement, parse
    failures), ``meta['mfd']`` and ``meta['hard']`` (MFD > delta). Unjudgeable items get ``mfd=None``
    and are never hard."""
    orders = ORDERS if both_orders else ORDERS[:1]
    if fmt == "single":
        scores = _judge_single(examples, oracle, orders, scoring, step, round, failure_budget)
    elif fmt == "pair":
        scores = _judge_pair(examples, oracle, orders, step, round, failure_budget)
    else:
        raise ValueError(f"steps.mfd.format must be 'single' or 'pair', got {fmt!r}")

    hard = unjudged = parse_failures = 0
    for ex in examples:
        per_order = scores[ex.id]
        t = [s["teacher"] for s in per_order.values() if s["teacher"] is not None]
        s_ = [s["student"] for s in per_order.values() if s["student"] is not None]
        failures = sum(s["failures"] for s in per_order.values())
        parse_failures += failures
        mfd = statistics.fmean(t) - statistics.fmean(s_) if t and s_ else None
        gaps = [s["teacher"] - s["student"] for s in per_order.values()
                if s["teacher"] is not None and s["student"] is not None]
        ex.meta["judge"] = {
            "orders": per_order,
            "teacher": statistics.fmean(t) if t else None,
            "student": statistics.fmean(s_) if s_ else None,
            # Position bias: how much the verdict moves when the answers swap places.
            "order_disagreement": abs(gaps[0] - gaps[1]) if len(gaps) == 2 else None,
            "parse_failures": failures,
        }
        ex.meta["mfd"] = mfd
        ex.meta["hard"] = mfd is not None and mfd > delta
        hard += ex.meta["hard"]
        unjudged += mfd is None
    mfds = [ex.meta["mfd"] for ex in examples if ex.meta["mfd"] is not None]
    return examples, {
        "hard": hard, "unjudged": unjudged, "parse_failures": parse_failures,
        "mean_mfd": builtins.round(statistics.fmean(mfds), 4) if mfds else None,
    }


def _judge_single(examples, oracle, orders, scoring, step, round, failure_budget):
    requests, keys = [], []
    for ex in examples:
        for order in orders:
            a1, a2 = _answers(ex, order)
            for slot, target in ((1, "Assistant 1"), (2, "Assistant 2")):
                prompt = render("judge_single", instruction=ex.prompt, answer_1=a1, answer_2=a2, target=target)
                requests.append(oracle.request("judge", [{"role": "user", "content": prompt}],
                                               id=f"judge/{ex.id}/{order}/{slot}"))
                who = "teacher" if (order == "ts") == (slot == 1) else "student"
                keys.append((ex.id, order, who))
    results = oracle.rating_many("judge", requests, step=step, round=round, scale=(1, 10), scoring=scoring,
                                 failure_budget=failure_budget)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (ex_id, order, who), res in zip(keys, results, strict=True):
        slot = out.setdefault(ex_id, {}).setdefault(order, {"teacher": None, "student": None, "failures": 0})
        slot[who] = res.value
        slot.setdefault("method", res.method)
        slot["failures"] += res.value is None
    return out


def _judge_pair(examples, oracle, orders, step, round, failure_budget):
    requests, keys = [], []
    for ex in examples:
        for order in orders:
            a1, a2 = _answers(ex, order)
            prompt = render("judge_pair", instruction=ex.prompt, answer_1=a1, answer_2=a2)
            requests.append(oracle.request("judge", [{"role": "user", "content": prompt}], id=f"judge/{ex.id}/{order}"))
            keys.append((ex.id, order))
    results = oracle.chat_many("judge", requests, step=step, round=round, parser=parse_score_pair,
                               failure_budget=failure_budget)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (ex_id, order), res in zip(keys, results, strict=True):
        parsed = res.meta.get("parsed") if res.ok else None
        first, second = parsed if parsed else (None, None)
        teacher, student = (first, second) if order == "ts" else (second, first)
        out.setdefault(ex_id, {})[order] = {"teacher": teacher, "student": student, "failures": int(parsed is None),
                                            "method": "generative"}
    return out
