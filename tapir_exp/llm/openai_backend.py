"""Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM's api_server, other providers) through the
official ``openai`` async client. The client's own retries are off: the Oracle retries with its own policy
(and counts every attempt)."""

from __future__ import annotations

import os
from typing import Any

import httpx
import openai

from tapir_exp.errors import ConfigError
from tapir_exp.llm.base import Backend, ChatRequest, ChatResult, RetryableError


def _sdk_http() -> Any:
    """The HTTP library the installed openai SDK is built on (httpx2 from openai 3, httpx before)."""
    try:
        import httpx2
    except ImportError:
        return httpx
    return httpx2


# The HTTP library the installed SDK is built on, resolved once (it is named on every request).
HTTP = _sdk_http()


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", organization: str | None = None, logprobs: bool = True,
                 timeout_s: float = 600.0, max_connections: int = 256, connections_per_client: int = 8,
                 http_client: str = "aiohttp", **_: Any):
        super().__init__(model)
        # The key is read from the environment when the config does not resolve one; never logged or saved.
        key = api_key or os.environ.get(api_key_env)
        if not key:
            raise ConfigError("oracle.backends.openai.api_key",
                              f"no API key: set the {api_key_env} environment variable (it is never written to disk)")
        self._logprobs = logprobs
        self.base_url = base_url
        if http_client not in ("httpx", "aiohttp"):
            raise ConfigError("oracle.backends.openai.http_client", f"expected httpx or aiohttp, got {http_client!r}")
        if http_client == "aiohttp" and not hasattr(openai, "DefaultAioHttpClient"):
            raise ConfigError("oracle.backends.openai.http_client", "this openai SDK has no aiohttp transport: "
                              "upgrade it (pip install 'openai[aiohttp]') or set http_client=httpx")
        self._transport = http_client
        # httpx: several small connection pools instead of one large one — httpx's pool scans every connection
        # it holds on each request event, so at 64+ connections one pool spends most of the client's CPU in
        # that scan (measured: bench/README.md). A request goes to the least busy pool that has a free
        # connection; a new pool is made only when all are full, so light traffic stays on one warm pool.
        # aiohttp's connector keeps its free connections in a queue (no scan): one pool serves them all.
        if http_client == "aiohttp":
            connections_per_client = max_connections
        per = max(1, min(int(connections_per_client), int(max_connections)))
        self._client_kw = dict(base_url=base_url, api_key=key, organization=organization, max_retries=0,
                               timeout=timeout_s)
        self._per = per
        self.clients: list[openai.AsyncOpenAI] = []
        self._max_clients = max(1, -(-int(max_connections) // per))
        self._inflight: list[int] = []
        self._add_client()  # built here, not inside the first request's timeout (~0.1 s: SSL context, imports)

    def _take_client(self) -> int:
        free = [i for i, n in enumerate(self._inflight) if n < self._per]
        if free:
            i = min(free, key=self._inflight.__getitem__)
        elif len(self.clients) < self._max_clients:
            i = self._add_client()
        else:  # more requests in flight than max_connections: queue in the least busy pool
            i = min(range(len(self.clients)), key=self._inflight.__getitem__)
        self._inflight[i] += 1
        return i

    def _add_client(self) -> int:
        self.clients.append(openai.AsyncOpenAI(**self._client_kw, http_client=self._http_client()))
        self._inflight.append(0)
        return len(self.clients) - 1

    def _http_client(self) -> Any:
        limits = HTTP.Limits(max_connections=self._per, max_keepalive_connections=self._per)
        # aiohttp: the SDK's own aiohttp transport (pip install openai[aiohttp])
        client = openai.DefaultAioHttpClient if self._transport == "aiohttp" else HTTP.AsyncClient
        return client(limits=limits, timeout=self._client_kw["timeout"])

    def supports_logprobs(self) -> bool:
        return self._logprobs

    async def complete(self, request: ChatRequest) -> ChatResult:
        kw: dict[str, Any] = {"model": self.model, "messages": request.message_dicts(),
                              "max_tokens": request.max_tokens, "temperature": request.temperature,
                              "top_p": request.top_p}
        if request.seed is not None:
            kw["seed"] = request.seed
        if request.stop:
            kw["stop"] = list(request.stop)
        if request.logprobs and self._logprobs:
            kw["logprobs"] = True
            if request.top_logprobs:
                kw["top_logprobs"] = request.top_logprobs
        slot = self._take_client()
        try:
            # The client's generic POST (its documented route for raw requests) instead of
            # chat.completions.create: the SDK's recursive transform of the params and its pydantic response
            # models were half of the client's CPU per request (bench/README.md); the JSON is read here.
            resp = await self.clients[slot].post("/chat/completions", body=kw, cast_to=HTTP.Response)
            data = resp.json()
        except openai.RateLimitError as e:
            raise RetryableError(f"429 rate limited: {_message(e)}", retry_after=_retry_after(e.response)) from e
        except openai.APIStatusError as e:
            if e.status_code >= 500 or e.status_code in (408, 409):
                raise RetryableError(f"{e.status_code}: {_message(e)}", retry_after=_retry_after(e.response)) from e
            raise  # 400/401/403/404: retrying cannot help
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            raise RetryableError(f"{type(e).__name__}: {e}") from e
        except (ValueError, openai.APIResponseValidationError) as e:  # malformed JSON body
            raise RetryableError(f"malformed response: {e}") from e
        finally:
            self._inflight[slot] -= 1
        return _chat_result(request.id, data)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()


def _retry_after(response: Any) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _message(e: openai.APIStatusError) -> str:
    return str(getattr(e, "message", e))[:200]


def _chat_result(request_id: str, data: Any) -> ChatResult:
    """A ChatResult from a chat-completions response body; a body of another shape is a malformed response."""
    try:
        choices = data.get("choices")
        if not choices:
            raise RetryableError("response has no choices")
        choice = choices[0]
        top = None
        content = (choice.get("logprobs") or {}).get("content")
        if content:
            top = [{t["token"]: t["logprob"] for t in (pos.get("top_logprobs") or [])} or {pos["token"]: pos["logprob"]}
                   for pos in content]
        usage = data.get("usage") or {}
        return ChatResult(request_id=request_id, text=(choice.get("message") or {}).get("content") or "",
                          finish_reason=choice.get("finish_reason"), prompt_tokens=usage.get("prompt_tokens") or 0,
                          completion_tokens=usage.get("completion_tokens") or 0, top_logprobs=top)
    except (AttributeError, KeyError, TypeError, IndexError) as e:
        raise RetryableError(f"malformed response: {type(e).__name__}: {e}") from e
