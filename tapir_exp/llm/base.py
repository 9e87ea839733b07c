"""Types shared by every oracle backend and the client around them.

A backend turns one :class:`ChatRequest` into one :class:`ChatResult`; everything else (concurrency,
rate limits, retries, caching, usage accounting) lives in :mod:`tapir_exp.llm.client`, so backends stay
small and every backend gets the same guarantees.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

# The oracle's roles: what each config names under oracle.roles and each request is sent as.
ROLES = ("teacher", "judge", "classifier", "expander", "refiner", "eval_judge")


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completion request. ``messages`` are OpenAI-style ``{"role", "content"}`` dicts.

    ``id`` names the request in failure records and progress (e.g. ``"judge/demo-0001/ts"``); it is not
    part of the cache key, so the same prompt asked for two items is paid once.
    """

    messages: tuple[tuple[str, str], ...]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    # Text the assistant's reply is forced to start with (in-process backends only; see Backend.prefill).
    prefill: str = ""
    id: str = ""

    @classmethod
    def of(cls, messages: list[dict[str, str]], **kw: Any) -> ChatRequest:
        if "stop" in kw and kw["stop"] is not None:
            kw["stop"] = tuple(kw["stop"])
        return cls(messages=tuple((m["role"], m["content"]) for m in messages), **kw)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def cache_key(self, backend: str, model: str) -> str:
        """Content address: backend, model, messages and every sampling parameter (seed included)."""
        payload = {k: v for k, v in asdict(self).items() if k != "id"}
        payload.update(backend=backend, model=model)
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass
class ChatResult:
    """The answer to one request, or the structured failure after the last retry (``error`` set)."""

    request_id: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # One dict per generated token position: candidate token text -> log-probability.
    top_logprobs: list[dict[str, float]] | None = None
    cached: bool = False
    error: str | None = None
    attempts: int = 1
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_cache(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("request_id", "cached", "attempts", "error"):
            d.pop(k)
        return d


class RetryableError(Exception):
    """A transient failure (429, 5xx, connection error, timeout, unusable response) worth retrying.

    ``retry_after`` carries the server's Retry-After in seconds when it gave one.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Backend(abc.ABC):
    """One way of answering chat requests. Subclasses implement :meth:`complete`.

    ``complete`` raises :class:`RetryableError` for transient failures and any other exception for
    permanent ones (bad request, authentication); the client decides about retries.
    """

    name: str = "backend"
    #: how many requests the backend can usefully run at once (a local model batches them).
    max_batch: int = 1

    def __init__(self, model: str):
        self.model = model

    @abc.abstractmethod
    async def complete(self, request: ChatRequest) -> ChatResult: ...

    async def complete_batch(self, requests: list[ChatRequest]) -> list[ChatResult | BaseException]:
        """Default: one by one. In-process backends override this to batch on the device."""
        out: list[ChatResult | BaseException] = []
        for r in requests:
            try:
                out.append(await self.complete(r))
            except BaseException as e:  # noqa: BLE001 - handed to the client, which classifies it
                out.append(e)
        return out

    def supports_logprobs(self) -> bool:
        return False

    def supports_prefill(self) -> bool:
        """Whether the backend can force the start of the reply (e.g. ``[[`` before a rating), which makes a
        small local judge put its probability mass on the rating tokens."""
        return False

    def release(self) -> None:
        """Give back the device memory held between calls (an engine in a worker process); the next call
        builds it again. Default: nothing held."""
        return None

    async def aclose(self) -> None:  # pragma: no cover - default no-op
        return None
