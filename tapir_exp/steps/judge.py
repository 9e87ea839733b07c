"""Model Fitting Difficulty: a judge scores the teacher's and the student's answer to the same
instruction on 1-10, in both presentation orders, and MFD = score(teacher) - score(student).

Two request formats:
- ``pair`` (Lion's referee, TAPIR's predecessor): one request per order shows both answers and returns two
  scores ``[[s1, s2]]``. Generative scoring asks for a brief justification before the scores; log-probability
  scoring asks for the scores alone and reads each as the expected rating over the rating tokens at its
  position (the reply starts with ``[[`` where the backend can prefill it).
- ``single``: one rating request per answer per order ("grade only Assistant 1"), both answers shown: twice
  the requests, but one rating token per reply, which a very small judge manages where two scores are too
  much for it.

``compare``: hard when MFD > delta (``gt``) or MFD >= delta (``ge``; Lion calls an item hard at a gap >= 1).
"""

from __future__ import annotations

import operator
import re
import statistics
from dataclasses import replace
from typing import Any

from tapir_exp.llm.oracle import LOGPROB_CANDIDATES, rating_distribution
from tapir_exp.prompts import render
from tapir_exp.records import Example

ORDERS = ("ts", "st")  # teacher shown first / student shown first
COMPARES = {"gt": operator.gt, "ge": operator.ge}
_PAIR = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*[,;/ ]\s*(\d+(?:\.\d+)?)\s*\]\]")


def is_hard(mfd: float | None, delta: float, compare: str = "gt") -> bool:
    """MFD past the threshold: ``mfd > delta`` (gt) or ``mfd >= delta`` (ge); never for an unjudged item."""
    if compare not in COMPARES:
        raise ValueError(f"steps.mfd.compare must be 'gt' or 'ge', got {compare!r}")
    return mfd is not None and COMPARES[compare](mfd, delta)


def parse_score_pair(text: str, lo: int = 1, hi: int = 10) -> tuple[float, float]:
    """The last ``[[7, 4]]`` in the text (after any justification) -> (7.0, 4.0); ValueError when absent or
    out of range."""
    found = list(_PAIR.finditer(text))
    m = found[-1] if found else None
    if not m:
        raise ValueError(f"no [[a, b]] score pair in {text[:80]!r}")
    a, b = float(m.group(1)), float(m.group(2))
    if not (lo <= a <= hi and lo <= b <= hi):
        raise ValueError(f"scores {a}, {b} outside {lo}-{hi}")
    return a, b


def pair_from_logprobs(positions: list[dict[str, float]], lo: int = 1, hi: int = 10) -> tuple[float, float] | None:
    """The expected ratings at the first two rating positions of a ``[[a, b]]`` reply (a position whose most
    likely token is a rating, not directly after another one), or None when there are fewer than two."""
    found: list[float] = []
    previous = False
    for pos in positions:
        dist = rating_distribution([pos], lo, hi) if pos else None
        if dist and not previous:
            found.append(sum(int(k) * p for k, p in dist.items()))
            if len(found) == 2:
                return found[0], found[1]
        previous = dist is not None
    return None


def _answers(ex: Example, order: str) -> tuple[str, str]:
    teacher, student = ex.output, ex.meta.get("student", "")
    return (teacher, student) if order == "ts" else (student, teacher)


def judge_mfd(examples: list[Example], oracle: Any, *, delta: float, both_orders: bool = True,
              scoring: str | None = None, fmt: str = "single", compare: str = "gt", justification_tokens: int = 0,
              step: str = "mfd", rnd: int = 0,
              failure_budget: float | None = None) -> tuple[list[Example], dict[str, Any]]:
    """Score every example; writes ``meta['judge']`` (scores per order, order disagreement, parse
    failures), ``meta['mfd']`` and ``meta['hard']`` (MFD past delta by ``compare``). Unjudgeable items get
    ``mfd=None`` and are never hard. ``justification_tokens``: completion budget of a generative pair
    request, whose judge writes a justification before the scores (at least the role's ``max_tokens``)."""
    if compare not in COMPARES:
        raise ValueError(f"steps.mfd.compare must be 'gt' or 'ge', got {compare!r}")
    orders = ORDERS if both_orders else ORDERS[:1]
    if fmt == "single":
        scores = _judge_single(examples, oracle, orders, scoring, step, rnd, failure_budget)
    elif fmt == "pair":
        scores = _judge_pair(examples, oracle, orders, scoring, justification_tokens, step, rnd, failure_budget)
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
        ex.meta["hard"] = is_hard(mfd, delta, compare)
        hard += ex.meta["hard"]
        unjudged += mfd is None
    mfds = [ex.meta["mfd"] for ex in examples if ex.meta["mfd"] is not None]
    return examples, {
        "hard": hard, "unjudged": unjudged, "parse_failures": parse_failures,
        "mean_mfd": round(statistics.fmean(mfds), 4) if mfds else None,
    }


def _judge_single(examples, oracle, orders, scoring, step, rnd, failure_budget):
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
    results = oracle.rating_many("judge", requests, step=step, rnd=rnd, scale=(1, 10), scoring=scoring,
                                 failure_budget=failure_budget)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (ex_id, order, who), res in zip(keys, results, strict=True):
        slot = out.setdefault(ex_id, {}).setdefault(order, {"teacher": None, "student": None, "failures": 0})
        slot[who] = res.value
        slot.setdefault("method", res.method)
        slot["failures"] += res.value is None
    return out


def pair_scored_by_logprobs(oracle: Any, scoring: str | None) -> bool:
    """Whether a pair request reads its scores from log-probabilities (so its prompt asks for no justification)."""
    scoring = scoring or oracle.role_cfg("judge").get("scoring") or "generative"
    return scoring == "logprob" and oracle.supports_logprobs("judge")


def _judge_pair(examples, oracle, orders, scoring, justification_tokens, step, rnd, failure_budget):
    by_logprob = pair_scored_by_logprobs(oracle, scoring)
    template = "judge_pair_scores" if by_logprob else "judge_pair"
    budget = None if by_logprob else max(int(justification_tokens or 0), int(oracle.role_cfg("judge").get("max_tokens") or 0)) or None
    requests, keys = [], []
    for ex in examples:
        for order in orders:
            a1, a2 = _answers(ex, order)
            prompt = render(template, instruction=ex.prompt, answer_1=a1, answer_2=a2)
            requests.append(oracle.request("judge", [{"role": "user", "content": prompt}], id=f"judge/{ex.id}/{order}",
                                           max_tokens=budget))
            keys.append((ex.id, order))
    if by_logprob:
        prefill = "[[" if oracle.backend_for("judge").supports_prefill() else ""
        requests = [replace(r, logprobs=True, top_logprobs=LOGPROB_CANDIDATES, prefill=prefill) for r in requests]
        results = oracle.chat_many("judge", requests, step=step, rnd=rnd, failure_budget=failure_budget)
        parsed_all, methods = [], []
        for res in results:
            pair = pair_from_logprobs(res.top_logprobs or []) if res.ok else None
            method = "logprob"
            if pair is None and res.ok:  # no two rating positions: read the text instead
                method = "generative-fallback"
                try:
                    pair = parse_score_pair(prefill + res.text)
                except ValueError:
                    oracle.usage.add("judge", step, rnd, parse_failures=1)
            parsed_all.append(pair)
            methods.append(method)
    else:
        results = oracle.chat_many("judge", requests, step=step, rnd=rnd, parser=parse_score_pair,
                                   failure_budget=failure_budget)
        parsed_all = [res.meta.get("parsed") if res.ok else None for res in results]
        methods = ["generative"] * len(results)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (ex_id, order), parsed, method in zip(keys, parsed_all, methods, strict=True):
        first, second = parsed if parsed else (None, None)
        teacher, student = (first, second) if order == "ts" else (second, first)
        out.setdefault(ex_id, {})[order] = {"teacher": teacher, "student": student, "failures": int(parsed is None),
                                            "method": method}
    return out
