"""Strict parsers for the oracle's structured answers. Each raises ValueError on an answer it cannot
read, so the oracle client can re-ask (``limits.parse_retries``) and then count a parse failure."""

from __future__ import annotations

import math
import re

_BRACKETED = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")
_LABELLED = re.compile(r"(?:rating|score)\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.I)
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+(.*\S)\s*$")


def parse_rating(text: str, lo: int = 1, hi: int = 10) -> float:
    """``[[7]]`` (preferred) or ``Rating: 7`` -> 7.0. ValueError when absent or outside [lo, hi]."""
    m = _BRACKETED.search(text) or _LABELLED.search(text)
    if not m:
        raise ValueError(f"no [[rating]] in {text[:80]!r}")
    value = float(m.group(1))
    if not lo <= value <= hi:
        raise ValueError(f"rating {value:g} outside {lo}-{hi}")
    return value


def parse_label(text: str, labels: list[str], fallback: str) -> tuple[str, bool]:
    """The taxonomy label named by the answer -> (label, True); anything else -> (fallback, False).

    Accepts the label alone, quoted, bulleted or followed by an explanation on the same line; an answer
    that names two different labels is ambiguous and invalid."""
    first = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    cleaned = re.sub(r"^[\s\-*#>\d.)]*(?:category|task)?\s*[:=]?\s*", "", first, flags=re.I)
    cleaned = cleaned.strip().strip("\"'`*.").strip()
    lookup = {lab.lower(): lab for lab in labels}
    if cleaned.lower() in lookup:
        return lookup[cleaned.lower()], True
    # Longest label first, so "Code Generation" is not read as a shorter label it contains.
    found = [lab for lab in sorted(labels, key=len, reverse=True)
             if re.search(rf"(?<![\w-]){re.escape(lab.lower())}(?![\w-])", first.lower())]
    distinct = {f for f in found if not any(f != g and f.lower() in g.lower() for g in found)}
    if len(distinct) == 1:
        return distinct.pop(), True
    return fallback, False


def parse_instructions(text: str, limit: int) -> list[str]:
    """Numbered or bulleted instructions, one per item; continuation lines join their item.

    Returns at most ``limit`` non-empty items; an answer with no list at all yields []."""
    items: list[str] = []
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if m:
            items.append(m.group(1).strip())
        elif items and line.strip() and not line.startswith(("#", "```")):
            items[-1] = f"{items[-1]} {line.strip()}"
    return [it for it in items if it][:limit]


def expected_rating(top_logprobs: dict[str, float], lo: int = 1, hi: int = 10) -> float | None:
    """Sum_k k * p(k) over the rating tokens among one position's top log-probabilities, renormalised over
    the rating tokens (as AlpacaEval 2's weighted judge does with its preference tokens). None when no
    rating token is among the candidates."""
    mass: dict[int, float] = {}
    for token, lp in top_logprobs.items():
        tok = token.strip()
        if tok.isascii() and tok.isdigit() and lo <= int(tok) <= hi:
            mass[int(tok)] = mass.get(int(tok), 0.0) + math.exp(lp)
    total = sum(mass.values())
    if total <= 0:
        return None
    return sum(k * p for k, p in mass.items()) / total


__all__ = ["parse_rating", "parse_label", "parse_instructions", "expected_rating"]
