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
    """Fill a template; a missing placeholder is a programming error and raises KeyError."""
    return load_prompt(name).substitute(**values).strip()


def available(prefix: str = "") -> list[str]:
    return sorted(p.name[:-4] for p in resources.files("tapir_exp.prompts").iterdir()
                  if p.name.endswith(".txt") and p.name.startswith(prefix))
