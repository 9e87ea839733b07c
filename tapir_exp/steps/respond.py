"""Answers: the teacher (oracle) answers instructions; the student answers the pool for MFD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapir_exp.records import Example


def teacher_answers(examples: list[Example], oracle: Any, *, step: str, rnd: int,
                    failure_budget: float | None = None) -> tuple[list[Example], dict[str, int]]:
    """Ask the teacher role for every example's response. Examples whose request failed after all retries
    (or came back empty) are dropped and counted: there is nothing to train on for them."""
    requests = [oracle.request("teacher", ex.messages(), id=f"teacher/{ex.id}") for ex in examples]
    results = oracle.chat_many("teacher", requests, step=step, rnd=rnd, failure_budget=failure_budget)
    kept: list[Example] = []
    failed = empty = truncated = 0
    for ex, res in zip(examples, results, strict=True):
        if not res.ok:
            failed += 1
            continue
        text = res.text.strip()
        if not text:
            empty += 1
            continue
        truncated += res.finish_reason == "length"
        ex.output = text
        ex.meta["teacher"] = {"finish_reason": res.finish_reason, "completion_tokens": res.completion_tokens}
        kept.append(ex)
    return kept, {"answered": len(kept), "failed": failed, "empty": empty, "truncated": truncated}


def student_answers(examples: list[Example], generator: Any, model_dir: str | Path) -> tuple[list[Example], dict[str, int]]:
    """The current student answers every example (its answer goes to ``meta['student']``)."""
    gens = generator.generate(model_dir, [ex.messages() for ex in examples])
    truncated = tokens = shortened = 0
    for ex, g in zip(examples, gens, strict=True):
        ex.meta["student"] = g.text.strip()
        ex.meta["student_tokens"] = g.completion_tokens
        if g.shortened:  # the prompt's middle was cut to fit the student's context
            ex.meta["student_prompt_shortened"] = g.shortened
            shortened += 1
        truncated += g.finish_reason == "length"
        tokens += g.completion_tokens
    return examples, {"answered": len(examples), "truncated": truncated, "completion_tokens": tokens,
                      "prompts_shortened": shortened}
