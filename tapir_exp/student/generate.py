"""The student answers: batched HF generation in-process (CPU/one GPU), vLLM in worker processes (GPUs; or
the CPU build), or a student already served behind an OpenAI-compatible endpoint.

vLLM runs in its own processes per call so its GPU memory is released before training starts again.

A prompt longer than the generator's input budget is never cut from the right (which would drop the
assistant header): the middle of its content is cut out and marked (:func:`tapir_exp.shorten.fit_chat`),
``Generation.shortened`` says how many tokens went, and the steps count it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapir_exp.errors import ConfigError
from tapir_exp.shorten import Fitted, PromptTooLong, fit_chat

log = logging.getLogger("tapir")


@dataclass
class Generation:
    text: str
    completion_tokens: int
    finish_reason: str  # stop | length
    prompt_tokens: int = 0
    shortened: int = 0  # prompt content tokens cut out to fit the context (0: the prompt was whole)


class HFGenerator:
    def __init__(self, batch_size: int = 32, max_new_tokens: int = 96, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, device: str = "cpu", dtype: str = "float32", max_input_tokens: int = 1024):
        self.batch_size, self.max_new_tokens = int(batch_size), int(max_new_tokens)
        self.temperature, self.top_p, self.seed = float(temperature), float(top_p), int(seed)
        self.device, self.dtype, self.max_input_tokens = device, dtype, int(max_input_tokens)
        self._loaded: tuple[str, Any, Any] | None = None

    def _load(self, model_dir: str | Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        key = str(Path(model_dir).resolve())
        if self._loaded is None or self._loaded[0] != key:
            tok = AutoTokenizer.from_pretrained(model_dir)
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, self.dtype)).to(self.device)
            model.eval()
            self._loaded = (key, tok, model)
        return self._loaded[1], self._loaded[2]

    def prompts(self, model_dir: str | Path, conversations: list[list[dict[str, str]]]) -> list[Fitted]:
        """The prompts as the model sees them: chat template + generation prompt, content shortened to fit
        ``max_input_tokens``."""
        tok, _ = self._load(model_dir)
        try:
            return [fit_chat(c, tok, self.max_input_tokens) for c in conversations]
        except PromptTooLong as e:
            raise ConfigError("generation.max_input_tokens", f"{self.max_input_tokens} is too small: {e}") from None

    def generate(self, model_dir: str | Path, conversations: list[list[dict[str, str]]]) -> list[Generation]:
        import torch

        tok, model = self._load(model_dir)
        fitted = self.prompts(model_dir, conversations)
        short = sum(1 for f in fitted if f.removed)
        if short:
            log.warning("HF generation: %d of %d prompt(s) longer than generation.max_input_tokens=%d had the middle "
                        "of their content cut (chat template kept)", short, len(fitted), self.max_input_tokens)
        order = sorted(range(len(fitted)), key=lambda i: fitted[i].n_tokens)  # similar lengths share a batch
        out: list[Generation | None] = [None] * len(fitted)
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
        torch.manual_seed(self.seed)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = tok([fitted[i].text for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(self.device)
            kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": tok.pad_token_id}
            if self.temperature > 0:
                kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
            else:
                kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                seqs = model.generate(**enc, **kw)
            for b, i in enumerate(idx):
                ids = seqs[b, enc["input_ids"].shape[1]:].tolist()
                n = next((j for j, t in enumerate(ids) if t in eos_ids), None)
                finish = "length" if n is None else "stop"
                ids = ids if n is None else ids[:n]
                out[i] = Generation(tok.decode(ids, skip_special_tokens=True), len(ids), finish, fitted[i].n_tokens,
                                    fitted[i].removed)
        return out  # type: ignore[return-value]


class VLLMGenerator:
    """Offline vLLM generation (``LLM.chat``) in worker processes (:mod:`tapir_exp.vllm_worker`) that end
    with the call, so no device memory is held once it returns.

    ``data_parallel_size`` workers each answer an interleaved shard of the prompts on their own
    ``tensor_parallel_size`` devices (their slice of ``devices``: null = the GPUs this process sees; on a CPU,
    a share of its cores each); answers come back in input order. A prompt that leaves less than
    ``max_new_tokens`` of ``max_model_len`` loses the middle of its longest message, marked, and is counted
    (``Generation.shortened``)."""

    def __init__(self, max_new_tokens: int = 1024, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 tensor_parallel_size: int = 1, max_model_len: int = 4096, gpu_memory_utilization: float = 0.85,
                 dtype: str = "auto", python: str | None = None, data_parallel_size: int = 1,
                 devices: list[Any] | None = None, enforce_eager: bool = False,
                 engine_kwargs: dict[str, Any] | None = None):
        # ``python``: the interpreter whose environment has vLLM (a separate venv is common: vLLM pins its own
        # torch/transformers); the worker imports only vLLM and the standard library.
        if int(max_new_tokens) >= int(max_model_len):
            raise ConfigError("generation.max_new_tokens", f"{max_new_tokens} leaves no room for the prompt in "
                                                           f"max_model_len={max_model_len}")
        if int(data_parallel_size) < 1:
            raise ConfigError("generation.data_parallel_size", f"must be >= 1, got {data_parallel_size}")
        self.python, self.data_parallel_size = python, int(data_parallel_size)
        self.devices = list(devices) if devices is not None else None
        self.sampling = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
                             seed=int(seed))
        self.engine = dict(tensor_parallel_size=int(tensor_parallel_size), max_model_len=int(max_model_len),
                           gpu_memory_utilization=float(gpu_memory_utilization), dtype=dtype, seed=int(seed),
                           enforce_eager=bool(enforce_eager), **(engine_kwargs or {}))
        self.last_workers: list[dict[str, Any]] = []  # what each worker of the last call reported (pid, devices)
        self.last_seconds: dict[str, float] = {}

    def generate(self, model_dir: str | Path, conversations: list[list[dict[str, str]]]) -> list[Generation]:
        import importlib.util

        from tapir_exp.vllm_engine import EngineProcess, plan_workers

        if self.python is None and importlib.util.find_spec("vllm") is None:
            raise ConfigError("generation", "generation=vllm needs the vllm package here (pip install "
                                            "'tapir-exp[vllm]') or generation.python=<a venv with vLLM, e.g. "
                                            ".venv-vllm/bin/python from scripts/setup_vllm_cpu.sh>")
        if not conversations:
            return []
        n = min(self.data_parallel_size, len(conversations))
        plans = plan_workers(n, self.engine["tensor_parallel_size"], self.devices, "generation.devices")
        workers = [EngineProcess({"model": str(model_dir), **self.engine}, self.python, p["env"], p["cpus"])
                   for p in plans]
        out: list[Generation | None] = [None] * len(conversations)
        t0 = time.perf_counter()
        try:
            for w in workers:  # every engine starts at once
                w.start()
            self.last_workers = [w.ready() for w in workers]
            t_ready = time.perf_counter()
            for k, w in enumerate(workers):  # interleaved shards: long and short prompts spread evenly
                w.send("generate", conversations=conversations[k::n], **self.sampling)
            for k, w in enumerate(workers):
                for j, g in enumerate(w.receive()["generations"]):
                    out[k + j * n] = Generation(**g)
            # engine start-up vs answering (what bench/vllm_throughput.py compares with raw vLLM)
            self.last_seconds = {"start": t_ready - t0, "answer": time.perf_counter() - t_ready}
        finally:
            for w in workers:
                w.close()
        return out  # type: ignore[return-value]


class OpenAIGenerator:
    """A student already served behind an OpenAI-compatible endpoint (vLLM's ``api_server``, TGI, a provider),
    called through the oracle client: bounded concurrency, rate limits, retries with back-off, timeouts.

    Nothing is cached: each round serves a new checkpoint, often under the same model name. ``model=null``
    sends the checkpoint directory as the model name, which is what ``python -m vllm.entrypoints.openai.
    api_server --model <dir>`` serves it under. Requests that still fail after the retries raise (a student
    answer is not optional)."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 max_new_tokens: int = 1024, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 concurrency: int = 32, timeout_s: float = 300.0, max_retries: int = 4, backoff_base_s: float = 1.0):
        self.base_url, self.model, self.api_key = base_url, model, api_key
        self.sampling = {"max_tokens": int(max_new_tokens), "temperature": float(temperature), "top_p": float(top_p)}
        self.seed = int(seed)
        self.limits = {"concurrency": int(concurrency), "timeout_s": float(timeout_s), "max_retries": int(max_retries),
                       "backoff_base_s": float(backoff_base_s), "backoff_max_s": 30.0, "parse_retries": 0}

    def generate(self, model_dir: str | Path, conversations: list[list[dict[str, str]]]) -> list[Generation]:
        from tapir_exp.llm.oracle import Oracle

        backend = {"_target_": "tapir_exp.llm.openai_backend.OpenAIBackend", "model": self.model or str(model_dir),
                   "base_url": self.base_url, "api_key": self.api_key, "api_key_env": "TAPIR_STUDENT_API_KEY",
                   "logprobs": False}
        if not self.api_key and not os.environ.get("TAPIR_STUDENT_API_KEY"):
            backend["api_key"] = "EMPTY"  # local servers (vLLM) accept any key
        client = Oracle({"backends": {"student": backend}, "roles": {"student": {"backend": "student", **self.sampling}},
                         "limits": self.limits, "cache": {"enabled": False}, "progress": False})
        try:
            requests = [client.request("student", conv, id=f"student/{i}", seed=self.seed)
                        for i, conv in enumerate(conversations)]
            results = client.chat_many("student", requests, step="student_generate", rnd=0, failure_budget=0.0)
        finally:
            client.close()
        return [Generation(r.text, r.completion_tokens, "length" if r.finish_reason == "length" else "stop",
                           r.prompt_tokens) for r in results]
