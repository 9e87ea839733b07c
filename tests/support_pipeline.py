"""A deterministic stand-in oracle for pipeline tests: a function that answers every TAPIR prompt the way a
(very predictable) strong model would, served over real HTTP by tapir_exp.testing.openai_server.

It recognises each role by the prompt files' wording, so it stays in step with tapir_exp/prompts/*.txt:
teacher answers are long and end with an 'Answer:' line (a third of them are terse); the judge rates an answer by its length (students
that write little score low, so MFD is real and positive early on); the classifier labels by keywords.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAPIR = [sys.executable, "-m", "tapir_exp.cli"]

VOCAB = ["amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "jasper", "kelp", "lotus",
         "maple", "nectar", "onyx", "pepper", "quartz", "raven", "sierra", "tulip", "umber", "violet", "willow",
         "xenon", "yarrow", "zephyr"]
KEYWORDS = [("python", "Code Generation"), ("function", "Code Generation"), ("bug", "Code Debug"),
            ("fix", "Code Debug"), ("calculate", "Math"), ("how many", "Math"), ("+", "Math"),
            ("if ", "Reasoning"), ("translate", "Multilingual"), ("poem", "Writing"), ("story", "Writing")]


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _section(prompt: str, name: str) -> str:
    m = re.search(rf"\[{re.escape(name)}\]\n(.*?)(?:\n\n\[|\n\n[A-Z][a-z]+ [a-z]|\Z)", prompt, re.S)
    return m.group(1).strip() if m else ""


def rating_for(answer: str) -> int:
    """Longer, answer-line-bearing responses score higher: 2..9."""
    score = 2 + min(5, len(answer) // 40) + (2 if "Answer:" in answer else 0)
    return max(1, min(9, score))


def _peaked(score: int) -> dict[str, float]:
    # A peaked distribution around the score, as a judge's top log-probabilities would look.
    return {str(score): math.log(0.8), str(max(1, score - 1)): math.log(0.15), str(min(10, score + 1)): math.log(0.05)}


def _rating_reply(score: int) -> dict:
    return {"text": f"[[{score}]]", "top_logprobs": [{"[[": -0.01}, _peaked(score), {"]]": -0.01}]}


def _pair_reply(a: int, b: int, justify: bool) -> dict:
    """``[[a, b]]`` with log-probabilities at both rating positions; a justification first when asked for one."""
    if justify:
        return {"text": f"Assistant 1 is {'more' if a > b else 'no more'} complete than Assistant 2.\n[[{a}, {b}]]"}
    return {"text": f"[[{a}, {b}]]",
            "top_logprobs": [{"[[": -0.01}, _peaked(a), {",": -0.01}, _peaked(b), {"]]": -0.01}]}


def responder(body: dict) -> str | dict:
    prompt = body["messages"][-1]["content"]
    if "grade only" in prompt:
        target = "Assistant 1" if "grade only Assistant 1" in prompt else "Assistant 2"
        return _rating_reply(rating_for(_section(prompt, target)))
    if "Score each assistant" in prompt:
        return _pair_reply(rating_for(_section(prompt, "Assistant 1")), rating_for(_section(prompt, "Assistant 2")),
                           justify="justify" in prompt)
    if "Assign the instruction below" in prompt:
        instr = _section(prompt, "Instruction").lower()
        for key, label in KEYWORDS:
            if key in instr:
                return label
        return "Writing" if _h(instr) % 3 else "not-a-label"
    if "Write " in prompt and "new instructions" in prompt:
        n = int(re.search(r"Write (\d+) new", prompt).group(1))
        seed = body.get("seed") or 0
        topic = re.search(r'category "([^"]+)"', prompt).group(1)
        # distinct enough not to be near-duplicates of each other (ROUGE-L below 0.7 between two of them)
        return "\n".join(f"{i + 1}. Write a {topic} exercise on "
                         f"{' '.join(random.Random(f'{prompt}/{seed}/{i}').sample(VOCAB, 14))}." for i in range(n))
    if "solves the task step by step" in prompt:
        return f"Step 1: read the task.\nStep 2: work it out.\nAnswer: {_h(prompt) % 100}"
    if "as working code" in prompt:
        return "```python\ndef solve(x):\n    return x\n```\nThe function returns its input unchanged."
    if "Which response is better?" in prompt:
        # Pairwise eval: prefers the reference (slot with the longer answer) 60/40, as log-probabilities.
        better = 1 if len(_section(prompt, "Response 1")) >= len(_section(prompt, "Response 2")) else 2
        top = {str(better): math.log(0.6), str(3 - better): math.log(0.4)}
        return {"text": f"[[{better}]]", "top_logprobs": [{"[[": -0.01}, top, {"]]": -0.01}]}
    if "[[" in prompt or "judge" in prompt.lower() or "impartial" in prompt.lower():
        # Evaluation judges: a rating or a preference token. Both parse from "[[n]]"/"m"-style answers.
        return _rating_reply(5)
    if _h(prompt) % 3 == 0:  # a terse teacher answer: the student can match it, so some items are easy
        return "Brief reply."
    instr = prompt.strip().splitlines()[0][:60]
    return (f"Here is a careful answer to '{instr}'. First consider what is asked, then work through it "
            f"step by step.\nAnswer: {_h(prompt) % 1000}")


def tapir_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(TAPIR_ROOT=str(tmp), WANDB_MODE="offline", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OPENAI_API_KEY="test-key", PYTHONPATH=str(REPO))
    return env


def fast_overrides(base_url: str) -> list[str]:
    """A small but complete configuration: every step runs, on the HTTP oracle and a tiny student."""
    return ["oracle=openai", f"oracle.backends.openai.base_url={base_url}", "oracle.backends.openai.model=fake-model",
            "data.pool_size=24", "curriculum.rounds=2", "curriculum.size=16", "steps.expand.per_round=4",
            "trainer.max_epochs=1", "student.max_epochs=2", "trainer.batch_size=4", "generation.max_new_tokens=12",
            "eval.alpaca_eval.max_items=4", "eval.mt_bench.max_questions=2", "logger=none",
            "oracle.limits.concurrency=8", "oracle.limits.max_retries=2", "oracle.limits.backoff_base_s=0.05",
            "oracle.progress=false", "steps.classify.method=oracle"]


# A small pre-trained skills base (experiment=skills_tapir's real one takes ~15 minutes to build): the same
# code path, for tests about what comes after the base.
SMALL_SKILLS_BASE = ["student.init.facts=400", "student.init.steps=8", "student.init.batch_size=4"]


def run_tapir(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(TAPIR + args, cwd=cwd, env=tapir_env(cwd), capture_output=True, text=True, **kw)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a rendezvous of spawned ranks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
