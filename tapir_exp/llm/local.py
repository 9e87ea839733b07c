"""An in-process transformers model as an oracle backend (the embedded default: SmolLM2-135M-Instruct).

Requests are generated in length-sorted batches with left padding, a prefix common to the whole batch computed
once; greedy when temperature is 0, otherwise sampled with each request's own seed (requests with different
seeds share a batch). Token log-probabilities come from the generation scores, so the judge's
log-probability rating works locally too. Generation runs in a worker thread so the client's event loop
(timeouts, progress) stays responsive.

A prompt longer than ``max_input_tokens`` keeps its chat template and prefill: the middle of its content
is cut out and marked (:func:`tapir_exp.shorten.fit_chat`; a judge prompt's two answers are shortened
evenly), the result carries ``meta['shortened']`` (tokens removed) and the usage ledger counts it. A
prompt that cannot fit even so (template + system prompt + prefill too long) fails as a request, with its
reason in the run's failure log.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tapir_exp.llm.base import Backend, ChatRequest, ChatResult
from tapir_exp.shorten import Fitted, fit_chat

TOP_K_LOGPROBS = 20
# A batch's common prefix is computed once when it is at least this long (shorter: not worth a second pass).
MIN_SHARED_PREFIX = 16
log = logging.getLogger("tapir")


class LocalBackend(Backend):
    name = "local"

    def __init__(self, model: str = "smollm2", batch_size: int = 16, device: str = "cpu", dtype: str = "float32",
                 cache_dir: str | None = None, max_input_tokens: int = 2048, **_: Any):
        super().__init__(model)
        self.max_batch = int(batch_size)
        self.device, self.dtype, self.max_input_tokens = device, dtype, int(max_input_tokens)
        self.cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "tapir" / "models"
        self._model = self._tok = None
        self._lock = threading.Lock()
        # Where the time goes, per request kind (the first part of the request id: teacher, judge, refine ...):
        # prompt tokens (with padding) and seconds of the prefill forward pass, generated steps x rows and
        # seconds of decoding. Read by Oracle (``<run_dir>/oracle_profile.json``) and bench/.
        self.profile: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.load_seconds = 0.0

    def supports_logprobs(self) -> bool:
        return True

    def supports_prefill(self) -> bool:
        return True

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tapir_exp.model_files import smollm2_hf_dir

        t0 = time.perf_counter()
        path = smollm2_hf_dir(self.cache_dir, "oracle.backends.local.model") if self.model == "smollm2" \
            else Path(self.model)
        self._tok = AutoTokenizer.from_pretrained(path)
        self._tok.padding_side = "left"
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        self._model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.dtype)).to(self.device)
        self._model.eval()
        # transformers 5 renamed the forward's past_key_values to cache (the old name is deprecated)
        self._cache_arg = "cache" if "cache" in inspect.signature(self._model.forward).parameters \
            else "past_key_values"
        self.load_seconds = round(time.perf_counter() - t0, 3)
        log.info("local oracle: %s loaded in %.1f s (%d torch threads, OpenMP wait policy %s)", path.name,
                 self.load_seconds, torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY", "default (spin)"))

    async def complete(self, request: ChatRequest) -> ChatResult:
        out = (await self.complete_batch([request]))[0]
        if isinstance(out, BaseException):
            raise out
        return out

    async def complete_batch(self, requests: list[ChatRequest]) -> list[ChatResult | BaseException]:
        return await asyncio.to_thread(self._generate_all, requests)

    def _generate_all(self, requests: list[ChatRequest]) -> list[ChatResult | BaseException]:
        with self._lock:
            self._load()
            # One generate() call per sampling setting; results go back in request order. Sampled requests with
            # different seeds share a call (each row draws from its own seeded generator, _RowSampler), except
            # when they ask for log-probabilities, which must be those of the sampling distribution.
            groups: dict[tuple, list[int]] = {}
            for i, r in enumerate(requests):
                sampled = r.temperature > 0
                key = (sampled, r.temperature if sampled else 0.0, r.top_p if sampled else 1.0,
                       r.seed if sampled and r.logprobs else None, r.logprobs)
                groups.setdefault(key, []).append(i)
            out: list[ChatResult | BaseException] = [None] * len(requests)  # type: ignore[list-item]
            fitted: list[Fitted | None] = [None] * len(requests)
            for i, r in enumerate(requests):
                try:
                    fitted[i] = self.fit(r)
                except ValueError as e:  # PromptTooLong: handed back for this request only
                    out[i] = e
            short = sum(1 for f in fitted if f is not None and f.removed)
            if short:
                log.warning("local oracle: %d of %d prompt(s) longer than max_input_tokens=%d had the middle of their "
                            "content cut (template and prefill kept)", short, len(requests), self.max_input_tokens)
            for (sampled, temperature, top_p, seed, logprobs), idx in groups.items():
                idx = [i for i in idx if fitted[i] is not None]
                if not idx:
                    continue
                try:
                    results = self._generate([requests[i] for i in idx], [fitted[i] for i in idx], sampled,
                                             temperature, top_p, seed, logprobs)
                except Exception as e:  # noqa: BLE001 - handed back per request; the client records it
                    results = [e] * len(idx)
                for i, res in zip(idx, results, strict=True):
                    out[i] = res
            return out

    def fit(self, request: ChatRequest) -> Fitted:
        """The prompt as the model sees it: chat template + prefill, content shortened to max_input_tokens."""
        self._load()
        return fit_chat(request.message_dicts(), self._tok, self.max_input_tokens, prefill=request.prefill)

    def _encode(self, fitted: list[Fitted]) -> tuple[dict[str, Any], int]:
        """A batch's token ids and attention mask, and how many leading tokens all its prompts share.

        Rows are left-padded as usual, except that a prefix of at least ``MIN_SHARED_PREFIX`` tokens common to
        the whole batch (chat template, system prompt, the judge's rubric up to "grade only Assistant": ~50 of
        a judge prompt's ~230 tokens) goes before the padding: ``[prefix | padding | rest]``. Its keys and
        values are then computed once and copied to every row (``_generate``). Positions come from the mask,
        so every token keeps the position it has in its own prompt; the answers change only by float noise
        (a different split of the same sums; bench/oracle_answers.py compares them)."""
        import torch

        rows = self._tok([f.text for f in fitted], add_special_tokens=False)["input_ids"]
        shared = shared_prefix_length(rows) if len(rows) > 1 else 0
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        width = max(len(r) for r in rows) - shared
        pad = self._tok.pad_token_id
        ids, mask = [], []
        for r in rows:
            gap = width - (len(r) - shared)
            ids.append(r[:shared] + [pad] * gap + r[shared:])
            mask.append([1] * shared + [0] * gap + [1] * (len(r) - shared))
        enc = {"input_ids": torch.tensor(ids, device=self.device),
               "attention_mask": torch.tensor(mask, device=self.device)}
        return enc, shared

    def _generate(self, reqs: list[ChatRequest], fitted: list[Fitted], sampled: bool, temperature: float,
                  top_p: float, seed: int | None, logprobs: bool) -> list[ChatResult]:
        import torch

        from tapir_exp.llm.kv_cache import GrowingCache

        tok, model = self._tok, self._model
        enc, shared = self._encode(fitted)
        max_new = max(int(r.max_tokens) for r in reqs)
        kw: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": tok.pad_token_id,
                              "return_dict_in_generate": True, "output_scores": logprobs}
        clock = _StepClock()
        processors: list[Any] = [clock]
        if sampled and logprobs:  # one seed (grouped so): transformers' own sampling, scores as sampled from
            torch.manual_seed(int(seed or 0))
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if sampled:  # greedy over scores that leave only each row's own draw
                processors.append(_RowSampler([int(r.seed or 0) for r in reqs], temperature, top_p,
                                              model.generation_config))
        # keys and values appended in place, with room for every token generate may add (kv_cache.py)
        cache = GrowingCache(reserve=max_new + 1)
        t0 = time.perf_counter()
        with torch.inference_mode():
            if shared:  # the shared prefix's keys and values, once, then a copy per row
                model(input_ids=enc["input_ids"][:1, :shared], use_cache=True, logits_to_keep=1,
                      **{self._cache_arg: cache})
                cache.batch_repeat_interleave(len(reqs))
            gen = model.generate(**enc, **kw, logits_processor=processors, **{self._cache_arg: cache})
        t_end = time.perf_counter()
        prompt_len = enc["input_ids"].shape[1]
        prof = self.profile[reqs[0].id.split("/")[0] or "?"]
        prof["batches"] += 1
        prof["requests"] += len(reqs)
        prof["prompt_tokens"] += int(enc["attention_mask"].sum())
        # what the forward passes read: the shared prefix once, each row's padded rest
        prof["padded_prompt_tokens"] += int(enc["input_ids"].numel()) - shared * (len(reqs) - 1)
        prof["shared_prefix_tokens"] += shared * (len(reqs) - 1)
        prof["prefill_s"] += (clock.first or t_end) - t0
        prof["decode_steps"] += max(0, clock.calls - 1)
        prof["decode_rows"] += max(0, clock.calls - 1) * len(reqs)
        prof["decode_s"] += t_end - (clock.first or t_end)
        eos = {tok.eos_token_id} | set(getattr(model.generation_config, "eos_token_id", None) or []
                                        if isinstance(getattr(model.generation_config, "eos_token_id", None), list)
                                        else [model.generation_config.eos_token_id])
        results = []
        for b, req in enumerate(reqs):
            ids = gen.sequences[b, prompt_len:].tolist()
            n, finish = len(ids), "length"
            for j, t in enumerate(ids):
                if t in eos:
                    n, finish = j, "stop"
                    break
            if n > req.max_tokens:
                n, finish = int(req.max_tokens), "length"
            text = tok.decode(ids[:n], skip_special_tokens=True)
            for s in req.stop:
                if s and s in text:
                    text, finish = text[: text.index(s)], "stop"
            top = None
            if logprobs and gen.scores:
                top = []
                for step in range(min(n if finish == "length" else n + 1, len(gen.scores))):
                    lp = torch.log_softmax(gen.scores[step][b].float(), dim=-1)
                    vals, toks = lp.topk(TOP_K_LOGPROBS)
                    top.append({tok.decode([t]): float(v) for v, t in zip(vals.tolist(), toks.tolist(), strict=True)
                                if v > float("-inf")})
            results.append(ChatResult(request_id=req.id, text=text, finish_reason=finish,
                                      prompt_tokens=int(enc["attention_mask"][b].sum()), completion_tokens=n,
                                      top_logprobs=top, meta={"shortened": fitted[b].removed} if fitted[b].removed
                                      else {}))
        return results


def shared_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens all rows have in common, leaving every row at least one token of its own."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(n, 0)):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(n, 0)


class _RowSampler:
    """Samples every row of a batch from its own generator, seeded with its request's seed, and hands back
    scores whose arg-max is that draw (everything else -inf), so that greedy search emits it.

    transformers samples a whole batch from the one global generator, so requests with different seeds used
    to be generated one at a time, at batch size 1; decoding on a CPU costs about the same per step for 1 or
    16 rows. The draw repeats transformers' sampling for a single request: its warpers in its order
    (temperature, top-k with the generation config's default of 50, top-p), softmax, one multinomial draw
    from a CPU generator seeded as ``torch.manual_seed(seed)`` seeds the global one; so a request samples the
    same text alone or in a batch, up to the float noise of padding (tests/test_local_oracle.py)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, generation_config: Any) -> None:
        import torch
        from transformers.generation.logits_process import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        top_k = generation_config.top_k if generation_config.top_k is not None \
            else type(generation_config)._get_default_generation_params()["top_k"]
        self.warpers: list[Any] = []
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k=top_k))
        if top_p is not None and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p))
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = torch.nn.functional.softmax(scores, dim=-1)
        picks = [int(torch.multinomial(probs[b:b + 1], num_samples=1, generator=g)) for b, g in
                 enumerate(self.generators)]
        only = torch.full_like(scores, float("-inf"))
        only[torch.arange(len(picks)), torch.tensor(picks)] = 0.0
        return only


class _StepClock:
    """A logits processor that only watches: called once per generated token, the first time right after the
    prompt's forward pass, so ``first - start`` is the prefill and the rest is decoding."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.calls = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.first is None:
            self.first = time.perf_counter()
        self.calls += 1
        return scores


def profile_summary(profile: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per request kind: the counters plus prefill and decode throughput (tokens/s)."""
    out = {}
    for kind, p in sorted(profile.items()):
        row = {k: round(v, 3) for k, v in p.items()}
        row["prefill_tok_per_s"] = round(p["padded_prompt_tokens"] / p["prefill_s"], 1) if p["prefill_s"] else None
        row["decode_tok_per_s"] = round(p["decode_rows"] / p["decode_s"], 1) if p["decode_s"] else None
        # the shared prefix counts once in padded_prompt_tokens (what was computed) and once per row in prompt_tokens
        row["padding_share"] = round(1 - (p["prompt_tokens"] - p["shared_prefix_tokens"]) / p["padded_prompt_tokens"],
                                     3) if p["padded_prompt_tokens"] else None
        out[kind] = row
    return out
