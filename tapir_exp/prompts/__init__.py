"""Prompt templates as files (``<name>.txt``), rendered with ``$placeholders`` (string.Template), so that
braces in code or JSON inside a prompt need no escaping."""

from __future__ import annotations

from functools import cache
from importlib import resources
from string import Template


@cache
def load_prompt(name: str) -> Template:
    text = resources.files("tapir_exp.prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return Template(text)


def render(name: str, **values: str) -> str:
    """Fill a template; a missing placeholder is a programming error and raises KeyError.

    The result remembers where each value went (:class:`tapir_exp.shorten.Rendered`), so a backend that must
    fit it into a context shortens the values (two long answers, evenly), never the template's own text."""
    from tapir_exp.shorten import Rendered

    template = load_prompt(name)
    chunks, spans, pos, length = [], [], 0, 0
    for m in template.pattern.finditer(template.template):
        literal = template.template[pos:m.start()]
        chunks.append(literal)
        length += len(literal)
        key = m.group("named") or m.group("braced")
        if key is not None:
            value = str(values[key])
            spans.append((length, length + len(value)))
        elif m.group("escaped") is not None:
            value = template.delimiter
        else:
            raise ValueError(f"invalid placeholder in prompt {name!r} at {m.start()}")
        chunks.append(value)
        length += len(value)
        pos = m.end()
    chunks.append(template.template[pos:])
    text = "".join(chunks)
    lead, stripped = len(text) - len(text.lstrip()), text.strip()
    clipped = [(max(0, s - lead), min(len(stripped), e - lead)) for s, e in spans]
    return Rendered(stripped, tuple((s, e) for s, e in clipped if e > s))


def available(prefix: str = "") -> list[str]:
    return sorted(p.name[:-4] for p in resources.files("tapir_exp.prompts").iterdir()
                  if p.name.endswith(".txt") and p.name.startswith(prefix))
