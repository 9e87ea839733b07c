"""An offline vLLM engine as an oracle backend (``oracle=vllm``).

The engine lives in a worker process (:mod:`tapir_exp.vllm_worker`), started on first use with
``python`` (a venv with vLLM; null = this interpreter) on ``devices``. Each batch the client hands over
goes to it as one ``LLM.chat`` call with one ``SamplingParams`` per request (two calls when a batch mixes
requests with and without a reply prefill: vLLM takes ``continue_final_message`` per call); results come
back in request order and a request vLLM rejects fails alone. Log-probabilities come from
``SamplingParams(logprobs=k)``; the ``[[`` prefill before a rating from ``continue_final_message``.

:meth:`release` ends the worker, which gives back all of the engine's device memory; the pipeline calls
it (through ``Oracle.release``) before the student trains or generates, and the next oracle batch starts a
new engine (the cost: one engine start-up per round and oracle phase, see ``conf/oracle/vllm.yaml``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tapir_exp.llm.base import Backend, ChatRequest, ChatResult, RetryableError
from tapir_exp.vllm_engine import EngineProcess, plan_workers


class VLLMRequestError(Exception):
    """vLLM refused or failed this one request (e.g. its prompt does not fit the context)."""


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model: str, tensor_parallel_size: int = 1, max_model_len: int = 4096,
                 gpu_memory_utilization: float = 0.85, dtype: str = "auto", seed: int = 0, batch_size: int = 1024,
                 python: str | None = None, devices: list[Any] | None = None, enforce_eager: bool = False,
                 engine_kwargs: dict[str, Any] | None = None, **_: Any):
        super().__init__(model)
        self.max_batch = int(batch_size)
        self.python, self.devices = python, (list(devices) if devices is not None else None)
        self.engine_kw = dict(model=model, tensor_parallel_size=int(tensor_parallel_size),
                              max_model_len=int(max_model_len), gpu_memory_utilization=float(gpu_memory_utilization),
                              dtype=dtype, seed=int(seed), enforce_eager=bool(enforce_eager), **(engine_kwargs or {}))
        self._worker: EngineProcess | None = None
        self._lock = threading.Lock()
        self.engine_starts = 0  # how many engines were built (one per release/rebuild cycle)
        self.chat_calls = 0  # LLM.chat calls of the current engine, as its worker counts them

    def supports_logprobs(self) -> bool:
        return True

    def supports_prefill(self) -> bool:
        return True

    def _engine(self) -> EngineProcess:
        if self._worker is None:
            plan = plan_workers(1, self.engine_kw["tensor_parallel_size"], self.devices, "oracle.backends.vllm")[0]
            worker = EngineProcess(self.engine_kw, self.python, plan["env"], plan["cpus"]).start()
            try:
                worker.ready()
            except BaseException:
                worker.close()
                raise
            self._worker = worker
            self.engine_starts += 1
        return self._worker

    @property
    def worker_info(self) -> dict[str, Any]:
        """What the running worker reports about itself (pid, CUDA_VISIBLE_DEVICES, cores); {} when released."""
        return self._worker.info if self._worker is not None else {}

    def release(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.release)

    async def complete(self, request: ChatRequest) -> ChatResult:
        out = (await self.complete_batch([request]))[0]
        if isinstance(out, BaseException):
            raise out
        return out

    async def complete_batch(self, requests: list[ChatRequest]) -> list[ChatResult | BaseException]:
        return await asyncio.to_thread(self._run, requests)

    def _run(self, requests: list[ChatRequest]) -> list[ChatResult | BaseException]:
        payload = [{"messages": r.message_dicts(), "prefill": r.prefill, "max_tokens": r.max_tokens,
                    "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed, "stop": list(r.stop),
                    "logprobs": r.top_logprobs if r.logprobs else None} for r in requests]
        with self._lock:
            worker = self._engine()  # a worker that cannot start raises here: nothing to retry
            try:
                reply = worker.call("chat", requests=payload)
            except RuntimeError as e:  # the worker died mid-batch (e.g. out of memory): a new one on retry
                worker.close()
                self._worker = None
                raise RetryableError(str(e)) from e
        self.chat_calls = int(reply["chat_calls"])
        results: list[ChatResult | BaseException] = []
        for req, out in zip(requests, reply["results"], strict=True):
            if "error" in out:
                results.append(VLLMRequestError(out["error"]))
            else:
                results.append(ChatResult(request_id=req.id, text=out["text"], finish_reason=out["finish_reason"],
                                          prompt_tokens=out["prompt_tokens"],
                                          completion_tokens=out["completion_tokens"], top_logprobs=out["top_logprobs"]))
        return results
