"""The planning oracle: ``tapir mode=plan`` runs the real pipeline against it. It calls no model: every request
is recorded (role, step, round, prompt tokens, ``max_tokens``) and answered at once with a placeholder of the
configured length that the steps' parsers accept, so each step asks exactly what it would ask a real oracle.

What a real oracle decides, the plan assumes:
- the classifier's labels follow ``tasks.ratios`` (uniform over ``tasks.labels`` without ratios), drawn per
  instruction from a hash of its prompt;
- which items are hard: the planning student (:mod:`tapir_exp.dry_run`) marks the answers it "misses" with
  :data:`MISSED`; the judge scores a marked answer 1 and every other 10, so MFD is 9 for a missed item and 0
  otherwise, and ``steps.mfd.delta`` / ``compare`` decide as they would;
- the expander's instructions are all new (none is a near-duplicate), the refiner's rewrites pass every
  style check, the evaluation judge's verdicts parse.

Requests that repeat one of an earlier call (same cache key) are cache hits, as with the real cache of a fresh
run; a prompt repeated within one call is sent once and its copies are not counted, as the client does.
Token counts: prompts at :data:`CHARS_PER_TOKEN` characters per token; completions at the request's
``max_tokens`` (an upper bound; two tokens for a log-probability rating with a prefilled ``[[``).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass, replace

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from tapir_exp.errors import ConfigError
from tapir_exp.llm.base import Backend, ChatRequest, ChatResult
from tapir_exp.llm.oracle import Oracle

CHARS_PER_TOKEN = 4.0
MISSED = "[planned: the student misses this one]"
# Instructions per expander reply: the expansion step takes what it asked for (at most 5 per request) and
# stops; a longer list costs nothing in the plan.
_EXPANDED_PER_REPLY = 10


@dataclass(frozen=True)
class PlannedRequest:
    """One request the plan would send."""

    role: str
    step: str
    round: int
    prompt_tokens: int
    max_tokens: int
    # a repeat of an earlier request: the cache answers it and nothing is paid
    cached: bool = False


# A placeholder answer stands for ``n`` tokens of text without holding them (a 52K-item plan would otherwise
# carry gigabytes of filler through the store); token estimates count it at its stated length.
_PLACEHOLDER = re.compile(r"\[planned text of (\d+) tokens[^\]]*\]")


def tokens_of(text: str) -> int:
    """Estimated tokens of ``text``: :data:`CHARS_PER_TOKEN` characters per token, a placeholder at its length."""
    stated = [int(m.group(1)) for m in _PLACEHOLDER.finditer(text)]
    rest = _PLACEHOLDER.sub("", text) if stated else text
    return math.ceil(len(rest) / CHARS_PER_TOKEN) + sum(stated)


def filler(n_tokens: int, salt: str = "") -> str:
    """A placeholder for ``n_tokens`` tokens of text (``salt`` keeps two placeholders apart)."""
    return f"[planned text of {max(1, int(n_tokens))} tokens{' ' + salt if salt else ''}]"


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


class PlaceholderBackend(Backend):
    """Answers one role's requests with placeholders. It reports the model name and the log-probability /
    prefill support of the configured backend (read from its class and config, never instantiated), so
    the steps build the requests they would build for it."""

    name = "plan"

    def __init__(self, role: str, node: DictConfig, labels: list[str], weights: list[float]):
        super().__init__(str(node.get("model", "unknown")))
        self.role, self.labels, self.weights = role, labels, weights
        cls = get_class(str(node._target_))
        # A backend that overrides the capability reports it; an OpenAI-compatible one reads ``logprobs``.
        self._logprobs = cls.supports_logprobs is not Backend.supports_logprobs and bool(node.get("logprobs", True))
        self._prefill = cls.supports_prefill is not Backend.supports_prefill
        self.cache_name = str(getattr(cls, "name", "backend"))  # the real backend's part of a cache key

    def supports_logprobs(self) -> bool:
        return self._logprobs

    def supports_prefill(self) -> bool:
        return self._prefill

    async def complete(self, request: ChatRequest) -> ChatResult:
        return self.answer(request)

    def answer(self, req: ChatRequest) -> ChatResult:
        prompt = req.messages[-1][1] if req.messages else ""
        text, top = self._reply(prompt, req)
        return ChatResult(request_id=req.id, text=text, finish_reason="stop",
                          prompt_tokens=sum(tokens_of(c) for _, c in req.messages) + tokens_of(req.prefill),
                          completion_tokens=int(req.max_tokens), top_logprobs=top if req.logprobs else None)

    def _reply(self, prompt: str, req: ChatRequest) -> tuple[str, list[dict[str, float]] | None]:
        if self.role == "classifier":
            pick = random.Random(_h(prompt)).choices(self.labels, weights=self.weights)[0]
            return pick, None
        if self.role == "judge":
            return _judge_reply(prompt)
        if self.role == "eval_judge":
            # "[[1]]": a preference (pairwise) and a rating (MT-Bench) alike
            return "[[1]]", [{"[[": 0.0}, {"1": math.log(0.5), "2": math.log(0.5)}, {"]]": 0.0}]
        if self.role == "expander":
            rng = random.Random(_h(prompt) + (req.seed or 0))
            return "\n".join(f"{i + 1}. Planned instruction {' '.join(f'w{rng.getrandbits(40):x}' for _ in range(8))}."
                             for i in range(_EXPANDED_PER_REPLY)), None
        if self.role == "refiner":  # passes every style's check: an answer line and a fenced block
            return f"```\n{filler(req.max_tokens)}\n```\nAnswer: planned", None
        return filler(req.max_tokens, str(_h(prompt) % 10_000)), None


def _judge_reply(prompt: str) -> tuple[str, list[dict[str, float]]]:
    """Scores 1 for the answer the planning student marked as missed, 10 for any other; the prompts show
    Assistant 1 before Assistant 2 (prompts/judge_*.txt), a single-grading prompt names its target."""
    missed = prompt.find(MISSED)
    second = prompt.rfind("[Assistant 2]")
    missed_slot = None if missed < 0 else (1 if missed < second else 2)

    def score(slot: int) -> int:
        return 1 if slot == missed_slot else 10

    if "grade only Assistant" in prompt:
        s = score(1 if "grade only Assistant 1" in prompt else 2)
        return f"[[{s}]]", [{"[[": 0.0}, {str(s): 0.0}, {"]]": 0.0}]
    a, b = score(1), score(2)
    return f"[[{a}, {b}]]", [{"[[": 0.0}, {str(a): 0.0}, {",": 0.0}, {str(b): 0.0}, {"]]": 0.0}]


class PlanningOracle(Oracle):
    """An :class:`Oracle` whose roles are :class:`PlaceholderBackend` s: the client's own request building,
    rating and re-ask logic run unchanged, and ``requests`` lists what it would have sent."""

    def __init__(self, cfg: DictConfig, labels: list[str], ratios: dict[str, float] | None = None):
        # nothing of the plan reaches a real cache
        own = {**OmegaConf.to_container(cfg, resolve=True), "cache": {"enabled": False}}  # type: ignore[dict-item]
        super().__init__(OmegaConf.create(own), run_dir=None, progress=False)
        self.labels = list(labels)
        self.weights = [float((ratios or {}).get(lab, 0.0)) for lab in self.labels] if ratios else []
        if not any(self.weights):
            self.weights = [1.0] * len(self.labels)
        self.requests: list[PlannedRequest] = []
        self._sent: set[tuple[str, str, ChatRequest]] = set()

    def backend_for(self, role: str) -> Backend:
        if role not in self._backends:
            name = self.role_cfg(role).get("backend")
            node = (self.cfg.backends or {}).get(name)
            if node is None:
                raise ConfigError(f"oracle.roles.{role}.backend", f"backend {name!r} is not defined under oracle.backends")
            self._backends[role] = PlaceholderBackend(role, node, self.labels, self.weights)
        return self._backends[role]

    async def _chat_many(self, role: str, requests: list[ChatRequest], step: str, rnd: int) -> list[ChatResult]:
        backend = self.backend_for(role)
        results, now = [], set()
        for req in requests:
            res = backend.answer(req)
            # the fields of the real cache key (ChatRequest.cache_key) without hashing its JSON: same identity
            key = (backend.cache_name, backend.model, replace(req, id=""))
            if key in now:  # the same prompt twice in one call: sent once, the copy is not counted (as Oracle)
                results.append(res)
                continue
            res.cached = key in self._sent  # asked before: the real cache answers it
            self.requests.append(PlannedRequest(role, step, rnd, res.prompt_tokens, int(req.max_tokens), res.cached))
            if res.cached:
                self.usage.count(role, step, rnd, cache_hits=1)
            else:
                now.add(key)
                self.usage.count(role, step, rnd, requests=1, prompt_tokens=res.prompt_tokens,
                                 completion_tokens=res.completion_tokens,
                                 cost_usd=self.estimate_cost(role, res.prompt_tokens, res.completion_tokens))
            results.append(res)
        self._sent |= now
        return results
