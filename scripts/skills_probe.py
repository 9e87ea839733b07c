"""Probe trained skills-world students on candidate task levels, without changing the world.

    .venv/bin/python scripts/skills_probe.py STUDENT_DIR [STUDENT_DIR ...] [--n 40]

For each student (a model directory, e.g. a shared warm-up ``<paths.cache_dir>/students/round0-<key>/model``)
prints exact-match accuracy on fresh items of the world's current levels that issue 19's item 2 is about
(Others and Grammar at difficulty 3, Reasoning and Math at difficulty 1; a calibration against the report) and
of candidate levels a per-seed fix could use: longer reversed words, longer Grammar phrases, a Reasoning story
with no step. Decoding is the eval's (``HFGenerator``, greedy, 96 new tokens). A candidate level the students
were never trained on measures length generalisation, not how a world built with that level would do.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable

from tapir_exp.skills import world
from tapir_exp.student.generate import HFGenerator


def _word(rng: random.Random, letters: int) -> str:
    return "".join(rng.choice("bdfgklmnprstvz" if i % 2 == 0 else "aeiou") for i in range(letters))


def _grammar(words: int) -> Callable[[random.Random], str]:
    def make(rng: random.Random) -> str:
        phrase = " ".join(rng.choice(world.WORDS) for _ in range(words))
        if rng.random() < 0.5:
            return f"Rewrite in upper case: {phrase}"
        return f"Replace every '{rng.choice('aeio')}' with '{rng.choice('uxz')}' in: {phrase}"
    return make


def _story(steps: int) -> Callable[[random.Random], str]:
    def make(rng: random.Random) -> str:
        text = world.gen_reasoning(rng, max(steps, 1))
        if steps == 0:  # the opening fact and the question only
            first, rest = text.split(". ", 1)
            text = f"{first}. {rest[rest.index('How many'):]}"
        return text
    return make


LEVELS: dict[str, Callable[[random.Random], str]] = {
    "Others d3 (7 letters reversed)": lambda rng: world.BACKWARDS + _word(rng, 7),
    "Others: 9 letters reversed": lambda rng: world.BACKWARDS + _word(rng, 9),
    "Others: 11 letters reversed": lambda rng: world.BACKWARDS + _word(rng, 11),
    "Grammar d3 (4 words)": _grammar(4),
    "Grammar: 6 words": _grammar(6),
    "Grammar: 8 words": _grammar(8),
    "Reasoning d1 (1 step)": _story(1),
    "Reasoning: no step": _story(0),
    "Math d1": lambda rng: world.gen_math(rng, 1),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("students", nargs="+", help="model directories")
    ap.add_argument("--n", type=int, default=40, help="fresh items per level (default 40)")
    ap.add_argument("--seed", type=int, default=99, help="seed of the items (default 99)")
    a = ap.parse_args(argv)
    gen = HFGenerator(batch_size=64, max_new_tokens=96)
    for student in a.students:
        print(student)
        for i, (name, make) in enumerate(LEVELS.items()):
            rng = random.Random(a.seed * 1000 + i)
            texts = [make(rng) for _ in range(a.n)]
            outs = gen.generate(student, [[{"role": "user", "content": t}] for t in texts])
            right = sum(world.final_answer(o.text) == world.solve(t) for t, o in zip(texts, outs, strict=True))
            print(f"  {name:34s} {right / a.n:.2f} ({right}/{a.n})", flush=True)


if __name__ == "__main__":
    main()
