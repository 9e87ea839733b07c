"""The oracle client: every oracle role (teacher, judge, classifier, expander, refiner, eval_judge) goes
through :class:`Oracle`, which gives every backend the same guarantees:

- a persistent SQLite cache in front of every call (a re-run or resumed run sends only missing keys);
- bounded concurrency, token-bucket limits for requests/min and tokens/min, a per-request timeout;
- retries with exponential backoff and full jitter that honour Retry-After, for 429, 5xx, connection
  errors, timeouts and unusable responses; after the last retry a structured failure record, never a drop;
- strict parsers with re-asks for structured answers, and log-probability rating;
- a usage ledger by role, step and round, and a progress bar with rate, ETA, tokens and cost.

Calls are synchronous for the pipeline; inside, an asyncio loop on a background thread runs them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tapir_exp.errors import BudgetExceeded, ConfigError
from tapir_exp.llm.base import Backend, ChatRequest, ChatResult, RetryableError
from tapir_exp.llm.cache import NoCache, OracleCache
from tapir_exp.llm.ledger import UsageLedger
from tapir_exp.llm.limits import RateLimiter
from tapir_exp.prompts.parsers import expected_rating, parse_rating

log = logging.getLogger("tapir.oracle")

# Per-request sampling keys a role config may set (anything else in a role node is client-side).
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "seed", "stop")
LOGPROB_CANDIDATES = 20  # the OpenAI API's maximum top_logprobs


@dataclass
class RatingResult:
    """A rating on the requested scale (``value`` None when neither logprobs nor text gave one)."""

    value: float | None
    text: str = ""
    method: str = "generative"  # logprob | generative | generative-fallback
    error: str | None = None
    probs: dict[str, float] | None = None
    request_id: str = ""


class Oracle:
    def __init__(self, cfg: DictConfig | dict, run_dir: str | Path | None = None, progress: bool | None = None):
        self.cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        self.roles: dict[str, dict[str, Any]] = OmegaConf.to_container(self.cfg.roles, resolve=True)  # type: ignore[assignment]
        self.run_dir = Path(run_dir) if run_dir else None
        lim = self.cfg.limits
        self.timeout_s = float(lim.get("timeout_s", 120))
        self.max_retries = int(lim.get("max_retries", 4))
        self.backoff_base_s = float(lim.get("backoff_base_s", 1.0))
        self.backoff_max_s = float(lim.get("backoff_max_s", 60.0))
        self.parse_retries = int(lim.get("parse_retries", 2))
        self.concurrency = int(lim.get("concurrency", 8))
        self._rpm, self._tpm = lim.get("requests_per_minute"), lim.get("tokens_per_minute")
        cache_cfg = self.cfg.get("cache") or {}
        self.cache = OracleCache(cache_cfg["path"]) if cache_cfg.get("enabled", True) else NoCache()
        self.usage = UsageLedger(self.run_dir / "oracle_usage.json" if self.run_dir else None, self.cache.usage_db)
        self.failures_path = self.run_dir / "oracle_failures.jsonl" if self.run_dir else None
        prices = self.cfg.get("prices")
        self.prices: dict[str, dict[str, float]] = (  # type: ignore[assignment]
            OmegaConf.to_container(prices, resolve=True) if prices is not None else {})
        self.show_progress = bool(self.cfg.get("progress", True)) if progress is None else progress
        self._backends: dict[str, Backend] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tapir-oracle", daemon=True)
        self._thread.start()
        self._sem: asyncio.Semaphore | None = None
        self._limiter: RateLimiter | None = None

    # ------------------------------------------------------------------ roles and backends
    def role_cfg(self, role: str) -> dict[str, Any]:
        if role not in self.roles:
            raise ConfigError(f"oracle.roles.{role}", f"no such role; configured: {', '.join(self.roles)}")
        return self.roles[role]

    def backend_for(self, role: str) -> Backend:
        name = self.role_cfg(role).get("backend")
        if name not in self._backends:
            node = (self.cfg.backends or {}).get(name)
            if node is None:
                raise ConfigError(f"oracle.roles.{role}.backend",
                                  f"backend {name!r} is not defined under oracle.backends")
            self._backends[name] = instantiate(node)
        return self._backends[name]

    def role_model(self, role: str) -> str:
        return str(self.backend_for(role).model)

    def supports_logprobs(self, role: str) -> bool:
        return self.backend_for(role).supports_logprobs()

    def request(self, role: str, messages: list[dict[str, str]], id: str = "", **overrides: Any) -> ChatRequest:
        """A request with the role's sampling defaults, overridden by ``overrides``."""
        rc = self.role_cfg(role)
        kw = {k: rc[k] for k in SAMPLING_KEYS if rc.get(k) is not None}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return ChatRequest.of(messages, id=id, **kw)

    def estimate_cost(self, role: str, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.prices.get(self.role_model(role)) or {}
        return (prompt_tokens * float(price.get("prompt", 0.0))
                + completion_tokens * float(price.get("completion", 0.0))) / 1e6

    # ------------------------------------------------------------------ public batch API
    def chat_many(self, role: str, requests: list[ChatRequest], *, step: str, rnd: int,
                  parser: Callable[[str], Any] | Sequence[Callable[[str], Any]] | None = None,
                  failure_budget: float | None = None) -> list[ChatResult]:
        """Answers in request order; failures come back with ``.error`` set. With ``parser`` (one for all,
        or one per request), each result's ``meta['parsed']`` holds ``parser(text)``; answers it rejects
        (ValueError or None) are re-asked with a new seed (sampling) up to ``limits.parse_retries`` times."""
        if not requests:
            return []
        results = self._run(self._chat_many(role, list(requests), step, rnd))
        if parser is not None:
            results = self._parse_with_retries(role, requests, results, parser, step, rnd)
        self._save_usage()
        failed = sum(not r.ok for r in results)
        if failure_budget is not None and failed / len(results) > failure_budget:
            raise BudgetExceeded(
                f"{step} (round {rnd}): {failed} of {len(results)} {role} requests failed after retries, more "
                f"than the failure budget {failure_budget:.0%}; answers so far are cached, failures are in "
                f"{self.failures_path or 'the log'}; re-run to retry them")
        return results

    def rating_many(self, role: str, requests: list[ChatRequest], *, step: str, rnd: int,
                    scale: tuple[int, int] = (1, 10), scoring: str | None = None,
                    failure_budget: float | None = None) -> list[RatingResult]:
        """Ratings on ``scale``. ``logprob``: the expected rating over the rating tokens' probabilities at
        the answer position (AlpacaEval 2 weights its judge the same way); falls back to parsing the text
        when the backend returns no log-probabilities. ``generative``: parse ``[[n]]`` with re-asks."""
        lo, hi = scale
        scoring = scoring or self.role_cfg(role).get("scoring") or "generative"
        if scoring not in ("logprob", "generative"):
            raise ConfigError(f"oracle.roles.{role}.scoring", f"expected logprob or generative, got {scoring!r}")
        if scoring == "logprob" and self.supports_logprobs(role):
            if self.backend_for(role).supports_prefill():
                # The reply is forced to start with "[[": the rating is the very next token, so two tokens
                # of generation are all the scoring needs.
                reqs = [replace(r, logprobs=True, top_logprobs=LOGPROB_CANDIDATES, prefill="[[",
                                max_tokens=min(r.max_tokens, 2)) for r in requests]
            else:
                reqs = [replace(r, logprobs=True, top_logprobs=LOGPROB_CANDIDATES) for r in requests]
            results = self.chat_many(role, reqs, step=step, rnd=rnd, failure_budget=failure_budget)
            out = []
            for res in results:
                if not res.ok:
                    out.append(RatingResult(None, "", "logprob", res.error, request_id=res.request_id))
                    continue
                probs = rating_distribution(res.top_logprobs or [], lo, hi)
                if probs:
                    value = expected_rating({k: _log(p) for k, p in probs.items()}, lo, hi)
                    out.append(RatingResult(value, res.text, "logprob", probs=probs, request_id=res.request_id))
                    continue
                try:
                    out.append(RatingResult(parse_rating(res.text, lo, hi), res.text, "generative-fallback",
                                            request_id=res.request_id))
                except ValueError as e:
                    self.usage.add(role, step, rnd, parse_failures=1)
                    out.append(RatingResult(None, res.text, "generative-fallback", f"parse: {e}",
                                            request_id=res.request_id))
            self._save_usage()
            return out
        results = self.chat_many(role, requests, step=step, rnd=rnd, failure_budget=failure_budget,
                                 parser=lambda t: parse_rating(t, lo, hi))
        return [RatingResult(r.meta.get("parsed"), r.text, "generative",
                             r.error or (f"parse: {r.meta['parse_error']}" if "parse_error" in r.meta else None),
                             request_id=r.request_id) for r in results]

    def release(self) -> None:
        """Every backend gives back the device memory it holds (an ``oracle=vllm`` engine ends its worker)
        before the student trains or generates on the same GPUs; the next oracle call rebuilds it."""
        for b in self._backends.values():
            b.release()

    def close(self) -> None:
        async def _close():
            for b in self._backends.values():
                await b.aclose()

        try:
            self._run(_close())
        finally:
            self._save_usage()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self.usage.close()
            self.cache.close()

    # ------------------------------------------------------------------ internals
    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _save_usage(self) -> None:
        self.usage.save()
        profiles = {name: b.profile for name, b in self._backends.items() if getattr(b, "profile", None)}
        if profiles and self.run_dir is not None:  # in-process backends: where their time went (bench/README.md)
            from tapir_exp.llm.local import profile_summary

            doc = {name: {"load_s": getattr(self._backends[name], "load_seconds", None),
                          "by_kind": profile_summary(p)} for name, p in profiles.items()}
            tmp = self.run_dir / "oracle_profile.json.tmp"
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, self.run_dir / "oracle_profile.json")

    def _parse_with_retries(self, role, requests, results, parser, step, rnd) -> list[ChatResult]:
        parsers = list(parser) if isinstance(parser, Sequence) else [parser] * len(results)
        todo = list(range(len(results)))
        for attempt in range(self.parse_retries + 1):
            bad = []
            for i in todo:
                res = results[i]
                if not res.ok:
                    continue
                try:
                    parsed = parsers[i](res.text)
                    if parsed is None:
                        raise ValueError("parser returned nothing")
                    res.meta["parsed"] = parsed
                    res.meta.pop("parse_error", None)
                except ValueError as e:
                    res.meta["parse_error"] = str(e)
                    bad.append(i)
            if not bad or attempt == self.parse_retries:
                break
            # Re-ask with sampling and a new seed: the cache key changes and the answer can too.
            retry = [replace(requests[i], seed=(requests[i].seed or 0) + 7919 * (attempt + 1),
                             temperature=max(requests[i].temperature, 0.7)) for i in bad]
            for i, res in zip(bad, self._run(self._chat_many(role, retry, step, rnd)), strict=True):
                res.meta["parse_attempts"] = attempt + 2
                results[i] = res
            todo = bad
        still = sum(1 for r in results if r.ok and "parse_error" in r.meta)
        if still:
            self.usage.add(role, step, rnd, parse_failures=still)
        return results

    async def _chat_many(self, role: str, requests: list[ChatRequest], step: str, rnd: int) -> list[ChatResult]:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
            self._limiter = RateLimiter(self._rpm, self._tpm)
        backend = self.backend_for(role)
        keys = [r.cache_key(backend.name, backend.model) for r in requests]
        cached = self.cache.get_many(keys)
        results: list[ChatResult | None] = [None] * len(requests)
        for i, (req, key) in enumerate(zip(requests, keys, strict=True)):
            if key in cached:
                results[i] = ChatResult(request_id=req.id, cached=True, **cached[key])
        hits = sum(r is not None for r in results)
        if hits:
            self.usage.add(role, step, rnd, cache_hits=hits)
        # Identical prompts in one call are sent once.
        pending: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if results[i] is None:
                pending.setdefault(key, []).append(i)
        bar = _Progress(f"{step}/{role} r{rnd}", len(requests), hits, self.show_progress and bool(pending))
        try:
            def deliver(key: str, res: ChatResult) -> None:
                for j in pending[key]:
                    results[j] = res if j == pending[key][0] else replace(res, request_id=requests[j].id, meta={})
                cost = self.estimate_cost(role, res.prompt_tokens, res.completion_tokens) if res.ok else 0.0
                bar.advance(len(pending[key]), res.prompt_tokens + res.completion_tokens, cost)

            if backend.max_batch > 1:
                await self._send_batched(backend, role, step, rnd, requests, pending, deliver)
            else:
                async def one(key: str) -> None:
                    deliver(key, await self._send_one(backend, role, step, rnd, requests[pending[key][0]], key))

                await asyncio.gather(*(one(k) for k in pending))
        finally:
            bar.close()
        return results  # type: ignore[return-value]

    async def _send_batched(self, backend, role, step, rnd, requests, pending, deliver) -> None:
        """In-process backends batch on the device; one batch at a time (they own the CPU/GPU)."""
        keys = sorted(pending, key=lambda k: len(str(requests[pending[k][0]].messages)))
        for start in range(0, len(keys), backend.max_batch):
            chunk = keys[start:start + backend.max_batch]
            reqs = [requests[pending[k][0]] for k in chunk]
            try:
                outs = await asyncio.wait_for(backend.complete_batch(reqs), self.timeout_s * len(reqs))
            except (asyncio.TimeoutError, RetryableError) as e:
                outs = [e] * len(reqs)
            for key, req, out in zip(chunk, reqs, outs, strict=True):
                if isinstance(out, ChatResult):
                    deliver(key, self._accept(backend, role, step, rnd, req, key, out, attempts=1))
                else:  # retry this one on its own, with the usual backoff
                    deliver(key, await self._send_one(backend, role, step, rnd, req, key, first_error=out))

    async def _send_one(self, backend: Backend, role: str, step: str, rnd: int, req: ChatRequest, key: str,
                        first_error: BaseException | None = None) -> ChatResult:
        attempt = 0
        error: BaseException | None = first_error
        while True:
            if error is None:
                try:
                    await self._limiter.acquire(_estimate_tokens(req))  # type: ignore[union-attr]
                    async with self._sem:  # type: ignore[union-attr]
                        res = await asyncio.wait_for(backend.complete(req), self.timeout_s)
                    return self._accept(backend, role, step, rnd, req, key, res, attempts=attempt + 1)
                except (RetryableError, asyncio.TimeoutError) as e:
                    error = e
                except Exception as e:  # noqa: BLE001 - permanent (bad request, auth): no retry
                    return self._fail(role, step, rnd, req, f"{type(e).__name__}: {e}", attempt + 1)
            if attempt >= self.max_retries:
                return self._fail(role, step, rnd, req, _describe(error), attempt + 1)
            retry_after = getattr(error, "retry_after", None)
            delay = (float(retry_after) if retry_after is not None
                     else random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)))
            self.usage.add(role, step, rnd, retries=1, requests=1)  # the failed attempt was sent
            log.debug("retry %s after %.2fs: %s", req.id, delay, _describe(error))
            await asyncio.sleep(delay)
            attempt += 1
            error = None

    def _accept(self, backend, role, step, rnd, req, key, res: ChatResult, attempts: int) -> ChatResult:
        res.request_id, res.attempts = req.id, attempts
        # The answering attempt is counted with its answer, in one transaction when the ledger lives in the
        # cache file (earlier failed attempts were counted as they failed): the ledger never lags the cache.
        counts = dict(requests=1, prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens,
                      truncated=int(res.finish_reason == "length"),
                      shortened=int(bool(res.meta.get("shortened"))),
                      cost_usd=self.estimate_cost(role, res.prompt_tokens, res.completion_tokens))
        shared = self.usage.db is not None and self.usage.db is self.cache.usage_db
        self.cache.put(key, res.to_cache(), backend.name, str(backend.model),
                       also=self.usage.sql(role, step, rnd, **counts) if shared else None)
        (self.usage.count if shared else self.usage.add)(role, step, rnd, **counts)
        return res

    def _fail(self, role: str, step: str, rnd: int, req: ChatRequest, error: str, attempts: int) -> ChatResult:
        self.usage.add(role, step, rnd, requests=1, failures=1)  # earlier attempts counted as they failed
        record = {"time": time.time(), "role": role, "step": step, "round": rnd, "request_id": req.id,
                  "error": error, "attempts": attempts}
        log.warning("oracle request %s failed after %d attempt(s): %s", req.id, attempts, error)
        if self.failures_path:
            self.failures_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.failures_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        return ChatResult(request_id=req.id, error=error, attempts=attempts)


def rating_distribution(positions: list[dict[str, float]], lo: int, hi: int) -> dict[str, float] | None:
    """The rating tokens' renormalised probabilities at the first position whose most likely token is a
    rating (e.g. after ``[[``). Ratings that are not single tokens (``10`` in most vocabularies) only count
    when the tokenizer has them."""
    import math

    for pos in positions:
        if not pos:
            continue
        if _rating_token(max(pos, key=pos.get), lo, hi) is None:
            continue
        mass: dict[int, float] = {}
        for tok, lp in pos.items():
            k = _rating_token(tok, lo, hi)
            if k is not None:  # " 7" and "7" are different tokens for the same rating
                mass[k] = mass.get(k, 0.0) + math.exp(lp)
        total = sum(mass.values())
        return {str(k): v / total for k, v in sorted(mass.items())}
    return None


def _rating_token(token: str, lo: int, hi: int) -> int | None:
    t = token.strip()
    return int(t) if t.isascii() and t.isdigit() and lo <= int(t) <= hi else None


def _log(p: float) -> float:
    import math

    return math.log(max(p, 1e-300))


def _estimate_tokens(req: ChatRequest) -> int:
    return sum(len(c) for _, c in req.messages) // 4 + int(req.max_tokens)


def _describe(error: BaseException | None) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timeout"
    return f"{type(error).__name__}: {error}" if error else "unknown error"


class _Progress:
    """A rich progress bar (rate, ETA, tokens, cost, cache hits) when stderr is a terminal; one log line
    per call otherwise, so CI logs stay readable."""

    def __init__(self, label: str, total: int, done: int, enabled: bool):
        self.label, self.total, self.done, self.tokens, self.cost = label, total, done, 0, 0.0
        self.hits, self.t0 = done, time.monotonic()
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done, info="")

    def advance(self, n: int, tokens: int, cost: float) -> None:
        self.done += n
        self.tokens += tokens
        self.cost += cost
        if self._bar is not None:
            rate = (self.done - self.hits) / max(1e-6, time.monotonic() - self.t0)
            self._bar.update(self._task, advance=n, info=f"{rate:.1f} req/s {self.tokens} tok ${self.cost:.4f} "
                                                         f"({self.hits} cached)")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self.done > self.hits:
            log.info("%s: %d requests (%d cached), %d tokens, $%.4f, %.1fs", self.label, self.total, self.hits,
                     self.tokens, self.cost, time.monotonic() - self.t0)


def build_oracle(oracle_cfg: DictConfig, run_dir: str | Path | None = None, progress: bool | None = None) -> Oracle:
    return Oracle(oracle_cfg, run_dir, progress)
