"""Task generators with canonical wording, a ``solve`` that recomputes any instance's answer from its text,
and the pool / eval-set builders.

Every task is mapped onto a label of the TAPIR taxonomy and has difficulty levels 1..3:

- Math: integer arithmetic; difficulty = digits and number of operations.
- Reasoning: a multi-step counting story with one numeric answer; difficulty = number of steps.
- Code Generation: a list transformation (reverse, sort, dedupe, rotate); difficulty = list length.
- Complex Format: emit a JSON object from given fields; difficulty = number of fields.
- Grammar: a rule-based rewrite (upper-case / swap a letter) of a short phrase; difficulty = phrase length.
- Others: easy copying (repeat a made-up word of 3 or 5 letters); difficulty 3 spells a 7-letter word backwards
  (issue 19: plain copying of longer words stayed at 100 %, and the 4-layer student reversed 5-letter words at
  100 % after its warm-up, leaving no room to improve at the top level).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tapir_exp.records import Example

NAMES = ["Ana", "Ben", "Caro", "Dev", "Eli", "Fay", "Gus", "Hana"]
THINGS = ["apples", "stamps", "coins", "books", "shells", "cards"]
WORDS = ["red", "sun", "map", "kite", "lamp", "river", "stone", "cloud", "tiger", "piano", "garden", "silver"]
KEYS = ["name", "city", "age", "year", "score", "team"]
ANSWER_LINE = re.compile(r"Answer:\s*(.+?)\s*$", re.M)


@dataclass(frozen=True)
class Instance:
    task: str
    difficulty: int
    instruction: str
    answer: str


# ---------------------------------------------------------------------------------------------- generators
def _num(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def gen_math(rng: random.Random, d: int) -> str:
    if d == 1:  # one-digit sums (issue 19: with a two-digit term no student got any right before instruction tuning)
        return f"Compute {_num(rng, 1)} + {_num(rng, 1)}."
    if d == 2:
        return f"Compute {_num(rng, 2)} + {_num(rng, 2)} - {_num(rng, 1)}."
    return f"Compute {_num(rng, 2)} * {_num(rng, 1)} + {_num(rng, 2)}."


def gen_reasoning(rng: random.Random, d: int) -> str:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    total = rng.randint(2, 9)
    parts = [f"{name} has {total} {thing}."]
    for _ in range(d):
        if rng.random() < 0.5 or total <= 2:  # never below zero
            k = rng.randint(1, 5)
            total += k
            parts.append(f"Then {name} gets {k} more.")
        else:
            k = rng.randint(1, 2)
            total -= k
            parts.append(f"Then {name} gives away {k}.")
    parts.append(f"How many {thing} does {name} have now?")
    return " ".join(parts)


def gen_code(rng: random.Random, d: int) -> str:
    items = [rng.randint(0, 9) for _ in range(2 * d + 1)]
    op = rng.choice(["Reverse", "Sort", "Dedupe", "Rotate"])
    if op == "Reverse":
        return f"Reverse the list {items}."
    if op == "Sort":
        return f"Sort the list {items} in ascending order."
    if op == "Dedupe":
        return f"Remove duplicates from the list {items}, keeping first occurrences."
    return f"Rotate the list {items} left by {rng.randint(1, len(items) - 1)}."


def gen_format(rng: random.Random, d: int) -> str:
    keys = rng.sample(KEYS, d + 1)
    fields = ", ".join(f"{k}={rng.choice(WORDS) if k in ('name', 'city', 'team') else rng.randint(1, 99)}" for k in keys)
    return f"Write a JSON object with the fields {fields}."


def gen_grammar(rng: random.Random, d: int) -> str:
    phrase = " ".join(rng.choice(WORDS) for _ in range(d + 1))
    if rng.random() < 0.5:
        return f"Rewrite in upper case: {phrase}"
    a, b = rng.choice("aeio"), rng.choice("uxz")
    return f"Replace every '{a}' with '{b}' in: {phrase}"


def _easy_level(word: str) -> int:
    return 1 if len(word) <= 3 else (2 if len(word) <= 5 else 3)


BACKWARDS = "Spell the word backwards: "


def gen_easy(rng: random.Random, d: int) -> str:
    # a pronounceable made-up word (consonant-vowel alternation) of 3 or 5 letters, copied at difficulty 1-2, and
    # of 7 letters reversed at 3 (copying a 7-letter word was as easy as a 3-letter one for the pre-trained
    # student, and the 4-layer student reversed every 5-letter word after its warm-up)
    word = "".join(rng.choice("bdfgklmnprstvz" if i % 2 == 0 else "aeiou") for i in range(2 * d + 1))
    return f"{BACKWARDS}{word}" if d == 3 else f"Repeat the word: {word}"


GENERATORS: dict[str, Callable[[random.Random, int], str]] = {
    "Math": gen_math, "Reasoning": gen_reasoning, "Code Generation": gen_code, "Complex Format": gen_format,
    "Grammar": gen_grammar, "Others": gen_easy,
}
TASKS = list(GENERATORS)


# ---------------------------------------------------------------------------------------------- solving
def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", text)]


def identify(instruction: str) -> tuple[str, int] | None:
    """(task, difficulty) of a canonical instruction, None for text this world did not write."""
    s = instruction.strip()
    if s.startswith("Compute "):
        return "Math", 3 if "*" in s else (1 if len(re.findall(r" [-+] ", s)) == 1 else 2)
    if re.match(r"^\w+ has \d+ \w+\.", s):
        return "Reasoning", s.count("Then ")
    m = re.search(r"the list \[([\d, ]*)\]", s)
    if m:
        return "Code Generation", (len(_ints(m.group(1))) - 1) // 2
    if s.startswith("Write a JSON object with the fields "):
        return "Complex Format", s.count("=") - 1
    if s.startswith(("Rewrite in upper case: ", "Replace every '")):
        phrase = s.split(": ", 1)[1] if s.startswith("Rewrite") else s.split(" in: ", 1)[1]
        return "Grammar", len(phrase.split()) - 1
    if s.startswith("Repeat the word: "):
        return "Others", _easy_level(s.split(": ", 1)[1])
    if s.startswith(BACKWARDS):
        return "Others", 3
    return None


def solve(instruction: str) -> str | None:
    """The exact answer of a canonical instruction (None when it is not one of ours)."""
    s = instruction.strip()
    try:
        if s.startswith("Compute "):
            expr = s[len("Compute "):].rstrip(".")
            if not re.fullmatch(r"[\d +\-*]+", expr):
                return None
            return str(eval(expr, {"__builtins__": {}}))  # noqa: S307 - digits and + - * only (checked above)
        if re.match(r"^\w+ has \d+ \w+\.", s):
            total = _ints(s.split(".")[0])[0]
            for step in re.findall(r"Then \w+ (gets|gives away) (\d+)", s):
                total += int(step[1]) if step[0] == "gets" else -int(step[1])
            return str(total)
        m = re.search(r"the list \[([\d, ]*)\]", s)
        if m:
            items = _ints(m.group(1))
            if s.startswith("Reverse"):
                out = items[::-1]
            elif s.startswith("Sort"):
                out = sorted(items)
            elif s.startswith("Remove duplicates"):
                out = list(dict.fromkeys(items))
            elif s.startswith("Rotate"):
                k = int(re.search(r"left by (\d+)", s).group(1)) % len(items)
                out = items[k:] + items[:k]
            else:
                return None
            return str(out)
        if s.startswith("Write a JSON object with the fields "):
            fields = s[len("Write a JSON object with the fields "):].rstrip(".")
            obj = {}
            for pair in fields.split(", "):
                k, v = pair.split("=", 1)
                obj[k] = int(v) if v.isdigit() else v
            return json.dumps(obj)
        if s.startswith("Rewrite in upper case: "):
            return s.split(": ", 1)[1].upper()
        m = re.match(r"^Replace every '(.)' with '(.)' in: (.*)$", s)
        if m:
            return m.group(3).replace(m.group(1), m.group(2))
        if s.startswith("Repeat the word: "):
            return s.split(": ", 1)[1]
        if s.startswith(BACKWARDS):
            return s[len(BACKWARDS):][::-1]
    except (ValueError, IndexError, AttributeError, SyntaxError):
        return None
    return None


def final_answer(response: str) -> str:
    """What a response commits to: the last ``Answer: ...`` line, else the whole stripped text."""
    found = ANSWER_LINE.findall(response or "")
    return found[-1].strip() if found else (response or "").strip()


def score_answer(instruction: str, response: str) -> int:
    """1-10 by exact checking: 10 exact; 6 numeric within 1 % (or a list / JSON with the right elements in
    the wrong order); 3 the right kind of answer with a wrong value; 1 otherwise. 5 when the instruction is
    not one of ours (no ground truth)."""
    truth = solve(instruction)
    if truth is None:
        return 5
    got = final_answer(response)
    if got == truth:
        return 10
    if re.fullmatch(r"-?\d+", truth) and re.fullmatch(r"-?\d+", got):
        return 6 if abs(int(got) - int(truth)) <= max(1, abs(int(truth)) // 100) else 3
    if truth.startswith(("[", "{")):
        if sorted(got) == sorted(truth):
            return 6
        return 3 if got[:1] == truth[:1] else 1
    return 3 if got and got.lower() == truth.lower() else 1


def make(task: str, difficulty: int, rng: random.Random) -> Instance:
    text = GENERATORS[task](rng, difficulty)
    return Instance(task, difficulty, text, solve(text))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- datasets
class SkillsPool:
    """``data.generator``: a seeded pool with a task mix and a difficulty spread (``fn() -> list[Example]``)."""

    def __init__(self, n: int = 600, mix: Mapping[str, float] | None = None, difficulties: list[int] | None = None,
                 seed: int = 0, salt: str = "pool", heldout_seed: int | None = None, heldout_per_cell: int = 10):
        self.n, self.seed, self.salt = int(n), int(seed), salt
        # the eval set the pool must never contain: the one evaluate_skills builds (eval.skills.seed/per_cell)
        self.heldout = (int(self.seed if heldout_seed is None else heldout_seed), int(heldout_per_cell))
        self.mix = dict(mix or dict.fromkeys(TASKS, 1.0))
        unknown = set(self.mix) - set(TASKS)
        if unknown:
            raise ValueError(f"data.generator.mix: unknown task(s) {sorted(unknown)}; known: {TASKS}")
        self.difficulties = list(difficulties or [1, 2, 3])

    def __call__(self) -> list[Example]:
        rng = random.Random(f"{self.seed}/{self.salt}")
        tasks, weights = zip(*self.mix.items(), strict=True)
        seen: set[str] = set()
        out: list[Example] = []
        attempts = 0
        while len(out) < self.n and attempts < self.n * 50:
            attempts += 1
            task = rng.choices(tasks, weights)[0]
            inst = make(task, rng.choice(self.difficulties), rng)
            if inst.instruction in seen or inst.instruction in _eval_instructions(*self.heldout):
                continue
            seen.add(inst.instruction)
            out.append(Example(id=f"skill-{len(out):05d}", instruction=inst.instruction, task=task, source="skills",
                               meta={"difficulty": inst.difficulty, "answer": inst.answer}))
        return out


def eval_set(seed: int, per_cell: int = 10, tasks: list[str] | None = None,
             difficulties: list[int] | None = None) -> list[Instance]:
    """Held-out instances per task and difficulty (the pool never contains them)."""
    rng = random.Random(f"{seed}/eval")
    out, seen = [], set()
    for task in tasks or TASKS:
        for d in difficulties or [1, 2, 3]:
            k = tries = 0
            while k < per_cell and tries < per_cell * 50:
                tries += 1
                inst = make(task, d, rng)
                if inst.instruction not in seen:
                    seen.add(inst.instruction)
                    out.append(inst)
                    k += 1
    return out


_EVAL_CACHE: dict[tuple[int, int], set[str]] = {}


def _eval_instructions(seed: int, per_cell: int = 10) -> set[str]:
    if (seed, per_cell) not in _EVAL_CACHE:
        _EVAL_CACHE[(seed, per_cell)] = {i.instruction for i in eval_set(seed, per_cell=per_cell)}
    return _EVAL_CACHE[(seed, per_cell)]
