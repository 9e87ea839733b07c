"""``oracle=skills``: one backend that plays every oracle role for the skills world, exactly.

It recognises the role from the wording of the project's prompt files (tapir_exp/prompts/*.txt) and
answers from the world's ground truth: the teacher gives the correct answer, the refiner worked steps (or
code) ending in ``Answer: ...``, the judge a 1-10 score from exact checking (with a peaked log-probability
distribution, so log-probability scoring works), the classifier the true label (wrong at a configured rate),
the expander new instances of the seeds' task and difficulty. Deterministic given the seed.
"""

from __future__ import annotations

import hashlib
import math
import random
import re

from tapir_exp.llm.base import Backend, ChatRequest, ChatResult
from tapir_exp.skills import world


def _section(prompt: str, name: str) -> str:
    m = re.search(rf"\[{re.escape(name)}\]\n(.*?)(?=\n\n\[|\n\n[A-Z][a-z]+ |\Z)", prompt, re.S)
    return m.group(1).strip() if m else ""


def _h(*parts: object) -> int:
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:12], 16)


class SkillsBackend(Backend):
    name = "skills"

    def __init__(self, model: str = "skills-oracle", seed: int = 0, classifier_error_rate: float = 0.0,
                 expand_harder: bool = False, labels: list[str] | None = None, **_: object):
        super().__init__(model)
        self.seed, self.error_rate, self.harder = int(seed), float(classifier_error_rate), bool(expand_harder)
        self.labels = list(labels or world.TASKS)

    def supports_logprobs(self) -> bool:
        return True

    async def complete(self, request: ChatRequest) -> ChatResult:
        prompt = request.messages[-1][1]
        reply = self.answer(prompt, request.seed or 0)
        text, top = (reply, None) if isinstance(reply, str) else reply
        return ChatResult(request_id=request.id, text=text, finish_reason="stop",
                          prompt_tokens=len(prompt.split()), completion_tokens=len(text.split()),
                          top_logprobs=top if request.logprobs else None)

    # ------------------------------------------------------------------ roles
    def answer(self, prompt: str, seed: int) -> str | tuple[str, list[dict[str, float]]]:
        if "grade only" in prompt:
            target = "Assistant 1" if "grade only Assistant 1" in prompt else "Assistant 2"
            return self._rating(world.score_answer(_section(prompt, "Instruction"), _section(prompt, target)))
        if "Score each assistant" in prompt:
            instr = _section(prompt, "Instruction")
            a = world.score_answer(instr, _section(prompt, "Assistant 1"))
            b = world.score_answer(instr, _section(prompt, "Assistant 2"))
            return f"[[{a}, {b}]]"
        if "Which response is better?" in prompt:
            instr = _section(prompt, "Instruction")
            a = world.score_answer(instr, _section(prompt, "Response 1"))
            b = world.score_answer(instr, _section(prompt, "Response 2"))
            p1 = 0.5 if a == b else (0.9 if a > b else 0.1)
            best = "1" if p1 >= 0.5 else "2"
            return f"[[{best}]]", [{"[[": 0.0}, {"1": math.log(p1), "2": math.log(1 - p1)}]
        if "rate the assistant's reply" in prompt:  # MT-Bench-style grading: no ground truth here
            return self._rating(5)
        if "Assign the instruction below" in prompt:
            return self._label(_section(prompt, "Instruction"))
        if "new instructions" in prompt and "Write " in prompt:
            return self._expand(prompt, seed)
        if "step by step" in prompt and "[Task]" in prompt:
            return self._worked(_section(prompt, "Task"), _section(prompt, "Answer"))
        if "as working code" in prompt:
            return self._code(_section(prompt, "Task"), _section(prompt, "Answer"))
        if "[Task]" in prompt and "[Answer]" in prompt:  # any other refinement style: keep the answer
            return _section(prompt, "Answer")
        truth = world.solve(prompt)
        return f"Answer: {truth}" if truth is not None else "Answer: unknown"

    @staticmethod
    def _rating(score: int) -> tuple[str, list[dict[str, float]]]:
        top = {str(score): math.log(0.9)}
        for k in (score - 1, score + 1):
            if 1 <= k <= 10:
                top[str(k)] = math.log(0.05)
        return f"[[{score}]]", [{"[[": 0.0}, top, {"]]": 0.0}]

    def _label(self, instruction: str) -> str:
        found = world.identify(instruction)
        label = found[0] if found else "Others"
        if self.error_rate and (_h(self.seed, "classify", instruction) % 10_000) / 10_000 < self.error_rate:
            others = [lab for lab in self.labels if lab != label]
            label = others[_h(self.seed, "wrong", instruction) % len(others)]
        return label

    def _expand(self, prompt: str, seed: int) -> str:
        n = int(re.search(r"Write (\d+) new", prompt).group(1))
        seeds = [m.group(1) for m in re.finditer(r"^\d+\.\s+(.*)$", prompt, re.M)]
        kinds = [k for k in (world.identify(s) for s in seeds) if k]
        if not kinds:
            return ""
        rng = random.Random(_h(self.seed, seed, prompt))
        lines = []
        for i in range(n):
            task, d = kinds[i % len(kinds)]
            d = min(3, d + 1) if self.harder else d
            lines.append(f"{i + 1}. {world.make(task, max(1, d), rng).instruction}")
        return "\n".join(lines)

    @staticmethod
    def _worked(instruction: str, previous: str) -> str:
        truth = world.solve(instruction)
        if truth is None:
            return previous
        kind = world.identify(instruction)
        steps = []
        if kind and kind[0] == "Math":
            expr = instruction[len("Compute "):].rstrip(".")
            steps.append(f"Evaluate {expr} left to right, multiplication first.")
        elif kind and kind[0] == "Reasoning":
            total = int(re.findall(r"\d+", instruction.split(".")[0])[0])
            steps.append(f"Start with {total}.")
            for verb, k in re.findall(r"Then \w+ (gets|gives away) (\d+)", instruction):
                total = total + int(k) if verb == "gets" else total - int(k)
                steps.append(f"{'Add' if verb == 'gets' else 'Subtract'} {k}: {total}.")
        return "\n".join(steps + [f"Answer: {truth}"])

    @staticmethod
    def _code(instruction: str, previous: str) -> str:
        truth = world.solve(instruction)
        if truth is None:
            return previous
        m = re.search(r"the list (\[[\d, ]*\])", instruction)
        data = m.group(1) if m else "[]"
        op = {"Reverse": "xs[::-1]", "Sort": "sorted(xs)", "Remove": "list(dict.fromkeys(xs))"}.get(
            instruction.split()[0], "xs[k:] + xs[:k]")
        return f"```python\nxs = {data}\nprint({op})\n```\nAnswer: {truth}"

