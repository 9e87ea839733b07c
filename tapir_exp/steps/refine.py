"""Response refinement: the refiner rewrites teacher responses in a task-specific style.

Styles are prompt files ``refine_<style>.txt``; each style has a check that the rewrite follows it
(a final ``Answer:`` line for stepwise, a fenced code block for code). A rewrite that fails its check is
re-asked (the oracle layer's parse retries); if it still fails, the item keeps its original response and
is counted."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from tapir_exp.prompts import render
from tapir_exp.records import Example

_ANSWER_LINE = re.compile(r"^\s*\**\s*(final\s+)?answer\s*\**\s*[:：]", re.IGNORECASE | re.MULTILINE)


def _check_stepwise(text: str) -> str:
    if not _ANSWER_LINE.search(text):
        raise ValueError("no 'Answer:' line")
    return text.strip()


def _check_code(text: str) -> str:
    if "```" not in text:
        raise ValueError("no fenced code block")
    return text.strip()


def _check_nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("empty rewrite")
    return text.strip()


CHECKS: dict[str, Callable[[str], str]] = {"stepwise": _check_stepwise, "code": _check_code}


def style_for(task: str | None, styles: Mapping[str, str], default: str | None) -> str | None:
    return styles.get(task or "", default)


def refine_responses(examples: list[Example], oracle: Any, *, styles: Mapping[str, str], default_style: str | None,
                     step: str = "refine", rnd: int = 0,
                     failure_budget: float | None = None) -> tuple[list[Example], dict[str, Any]]:
    todo: dict[str, list[Example]] = {}
    for ex in examples:
        style = style_for(ex.task, styles, default_style)
        if style and ex.output:
            todo.setdefault(style, []).append(ex)
    refined = kept = 0
    by_style: dict[str, int] = {}
    # Every style in one call (each request with its own style's check): the requests share batches, so a
    # style with one item does not cost a generate() of its own (on a CPU a decoding step costs about the
    # same for 1 row as for 32), and an API backend gets them all at once.
    items = [(style, ex) for style, group in todo.items() for ex in group]
    requests = [oracle.request("refiner", [{"role": "user", "content": render(
        f"refine_{style}", instruction=ex.prompt, response=ex.output)}], id=f"refine/{ex.id}") for style, ex in items]
    checks = [CHECKS.get(style, _check_nonempty) for style, _ in items]
    results = oracle.chat_many("refiner", requests, step=step, rnd=rnd, parser=checks,
                               failure_budget=failure_budget)
    for (style, ex), res in zip(items, results, strict=True):
        parsed = res.meta.get("parsed") if res.ok else None
        if parsed:
            ex.meta["original_output"] = ex.output
            ex.output = parsed
            ex.meta["refined"] = style
            refined += 1
            by_style[style] = by_style.get(style, 0) + 1
        else:
            ex.meta["refine_failed"] = style
            kept += 1
    return examples, {"refined": refined, "kept_original": kept, "untouched": len(examples) - refined - kept,
                      "by_style": by_style}
