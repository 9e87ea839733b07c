"""A plain-text corpus of the skills world, in the form web text would hold its facts.

Pre-training text is not instruction data: no "Compute ...", no "Answer:" line, no chat turns. It states
facts ("7 + 63 = 70", "sorted: [1, 1, 4]"), worked steps ("15 * 5 = 75, 75 + 75 = 150"), stories with their
outcome and JSON objects, so that a model pre-trained on it has some of every skill and instruction tuning
only has to connect the world's instructions to them — as with an LLM. Every fact is computed with
``world.solve`` on an instance from ``world``'s own generators; instances of the held-out eval set are left
out (the corpus is the model's "web", and the eval set must not be on it).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable

from tapir_exp.skills import world


def _math(inst: world.Instance, rng: random.Random) -> str:
    expr = inst.instruction[len("Compute "):].rstrip(".")
    nums = world._ints(expr)
    if "*" in expr and rng.random() < 0.5:  # worked: product first
        prod = nums[0] * nums[1]
        return f"{nums[0]} * {nums[1]} = {prod}, {prod} + {nums[2]} = {inst.answer}"
    if expr.count(" ") == 4 and rng.random() < 0.5:  # worked, left to right
        first = nums[0] + nums[1]
        return f"{nums[0]} + {nums[1]} = {first}, {first} - {nums[2]} = {inst.answer}"
    return f"{expr} = {inst.answer}"


def _reasoning(inst: world.Instance, rng: random.Random) -> str:
    story = inst.instruction.rsplit(" How many ", 1)[0]
    m = re.match(r"^(\w+) has (\d+) (\w+)\.", story)
    name, thing = m.group(1), m.group(3)
    if rng.random() < 0.5:
        return f"{story} Now {name} has {inst.answer} {thing}."
    total, steps = int(m.group(2)), []
    for verb, k in re.findall(r"Then \w+ (gets|gives away) (\d+)", story):
        new = total + int(k) if verb == "gets" else total - int(k)
        steps.append(f"{total} {'+' if verb == 'gets' else '-'} {k} = {new}")
        total = new
    return f"{story} So {', '.join(steps)}."


def _code(inst: world.Instance, rng: random.Random) -> str:
    data = re.search(r"the list (\[[\d, ]*\])", inst.instruction).group(1)
    op = inst.instruction.split()[0]
    if op == "Rotate":
        k = re.search(r"left by (\d+)", inst.instruction).group(1)
        return rng.choice([f"{data} rotated left by {k}: {inst.answer}", f">>> xs = {data}\n>>> xs[{k}:] + xs[:{k}]\n{inst.answer}"])
    call = {"Reverse": f"list(reversed({data}))", "Sort": f"sorted({data})",
            "Remove": f"list(dict.fromkeys({data}))"}[op]
    word = {"Reverse": "reversed", "Sort": "sorted", "Remove": "without duplicates"}[op]
    return rng.choice([f"{data} {word}: {inst.answer}", f">>> {call}\n{inst.answer}"])


def _format(inst: world.Instance, rng: random.Random) -> str:
    fields = inst.instruction[len("Write a JSON object with the fields "):].rstrip(".")
    return rng.choice([f"{fields} as JSON: {inst.answer}", f"record: {fields}\njson: {inst.answer}",
                       json.dumps(json.loads(inst.answer))])


def _grammar(inst: world.Instance, rng: random.Random) -> str:
    if inst.instruction.startswith("Rewrite in upper case: "):
        phrase = inst.instruction.split(": ", 1)[1]
        return rng.choice([f"{phrase} in upper case: {inst.answer}", f"{phrase}.upper() == '{inst.answer}'"])
    m = re.match(r"^Replace every '(.)' with '(.)' in: (.*)$", inst.instruction)
    a, b, phrase = m.groups()
    return f"{phrase} with every {a} as {b}: {inst.answer}"


def _easy(inst: world.Instance, rng: random.Random) -> str:
    if inst.instruction.startswith(world.BACKWARDS):
        word = inst.instruction[len(world.BACKWARDS):]
        return rng.choice([f"{word} backwards: {inst.answer}", f"the word {word} spelled backwards is {inst.answer}"])
    return rng.choice([f"{inst.answer} {inst.answer}", f"the word {inst.answer}, again: {inst.answer}"])


TEXT: dict[str, Callable[[world.Instance, random.Random], str]] = {
    "Math": _math, "Reasoning": _reasoning, "Code Generation": _code, "Complex Format": _format,
    "Grammar": _grammar, "Others": _easy,
}


def facts(n: int, seed: int = 0, heldout: tuple[int, int] | None = (1234, 10),
          mix: dict[str, float] | None = None) -> list[str]:
    """``n`` distinct facts, tasks drawn by ``mix`` (default uniform) and difficulties uniformly; none of them
    states an instance of the held-out eval set ``world.eval_set(*heldout)``."""
    rng = random.Random(f"{seed}/corpus")
    mix = dict(mix or dict.fromkeys(world.TASKS, 1.0))
    unknown = set(mix) - set(world.TASKS)
    if unknown:
        raise ValueError(f"corpus mix: unknown task(s) {sorted(unknown)}; known: {world.TASKS}")
    banned = world._eval_instructions(*heldout) if heldout else set()
    tasks, weights = zip(*mix.items(), strict=True)
    out, seen, attempts = [], set(), 0
    while len(out) < n and attempts < n * 20:
        attempts += 1
        inst = world.make(rng.choices(tasks, weights)[0], rng.randint(1, 3), rng)
        if inst.instruction in banned:
            continue
        text = TEXT[inst.task](inst, rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def addition_table(copies: int, seed: int = 0) -> list[str]:
    """The one-digit addition table (all 81 sums ``a + b = c``), ``copies`` times, each copy in its own seeded
    order and cut into pages of 9 lines.

    Web text states these sums over and over (times tables, worksheets), so an LLM knows every one of them;
    the distinct-fact corpus states each at most once and never the held-out ones, which left the students at
    0 % on Math difficulty 1 (one-digit sums) whatever the instruction tuning (issue 19). With the table, Math
    difficulty 1 asks the instruction tuning to use a known fact, as it would an LLM's; the held-out
    instructions (``Compute a + b.``) still never appear."""
    rng = random.Random(f"{seed}/table")
    sums = [f"{a} + {b} = {a + b}" for a in range(1, 10) for b in range(1, 10)]
    out = []
    for _ in range(copies):
        order = rng.sample(sums, len(sums))
        out += ["\n".join(order[i:i + 9]) for i in range(0, len(order), 9)]
    return out


def interleave(docs: list[str], extra: list[str], seed: int = 0) -> list[str]:
    """``extra`` pages spread over ``docs`` at seeded positions (order within each list kept)."""
    rng = random.Random(f"{seed}/interleave")
    slots = sorted(rng.randint(0, len(docs)) for _ in extra)
    out, j = [], 0
    for i, d in enumerate(docs):
        while j < len(extra) and slots[j] == i:
            out.append(extra[j])
            j += 1
        out.append(d)
    return out + extra[j:]


def documents(texts: list[str], seed: int = 0, per_doc: tuple[int, int] = (3, 8)) -> list[str]:
    """Facts grouped into short "pages" (several facts, one per line), as they would sit in web text."""
    rng = random.Random(f"{seed}/docs")
    out, i = [], 0
    while i < len(texts):
        k = rng.randint(*per_doc)
        out.append("\n".join(texts[i:i + k]))
        i += k
    return out
