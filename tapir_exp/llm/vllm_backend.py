"""An offline vLLM engine as an oracle backend (GPU; ``pip install 'tapir-exp[vllm]'``).

The engine is built on first use and serves every request of a ``chat_many`` call in one ``LLM.chat``
batch (vLLM schedules them continuously); log-probabilities come from ``SamplingParams(logprobs=k)``.
Reply prefill (``[[`` before a rating) uses ``continue_final_message``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tapir_exp.errors import ConfigError
from tapir_exp.llm.base import Backend, ChatRequest, ChatResult


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model: str, tensor_parallel_size: int = 1, max_model_len: int = 4096,
                 gpu_memory_utilization: float = 0.85, dtype: str = "auto", seed: int = 0, batch_size: int = 1024,
                 **_: Any):
        super().__init__(model)
        self.max_batch = int(batch_size)
        self.engine_kw = dict(model=model, tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                              gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, seed=seed)
        self._llm = None
        self._lock = threading.Lock()

    def supports_logprobs(self) -> bool:
        return True

    def supports_prefill(self) -> bool:
        return True

    def _engine(self):
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as e:
                raise ConfigError("oracle.backends.vllm", "needs the vllm package (GPU): pip install 'tapir-exp[vllm]'; "
                                                          "or serve a model and use oracle=vllm_server") from e
            self._llm = LLM(**self.engine_kw)
        return self._llm

    async def complete(self, request: ChatRequest) -> ChatResult:
        out = (await self.complete_batch([request]))[0]
        if isinstance(out, BaseException):
            raise out
        return out

    async def complete_batch(self, requests: list[ChatRequest]) -> list[ChatResult | BaseException]:
        return await asyncio.to_thread(self._run, requests)

    def _run(self, requests: list[ChatRequest]) -> list[ChatResult | BaseException]:
        from vllm import SamplingParams

        with self._lock:
            llm = self._engine()
            results: list[ChatResult | BaseException] = []
            for req in requests:  # vLLM batches internally; per-request params keep results exact
                msgs = req.message_dicts() + ([{"role": "assistant", "content": req.prefill}] if req.prefill else [])
                params = SamplingParams(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                                        seed=req.seed, stop=list(req.stop) or None,
                                        logprobs=req.top_logprobs if req.logprobs else None)
                try:
                    out = llm.chat([msgs], params, use_tqdm=False, add_generation_prompt=not req.prefill,
                                   continue_final_message=bool(req.prefill))[0]
                except Exception as e:  # noqa: BLE001 - recorded by the client
                    results.append(e)
                    continue
                o = out.outputs[0]
                top = None
                if req.logprobs and o.logprobs:
                    top = [{lp.decoded_token: lp.logprob for lp in pos.values()} for pos in o.logprobs]
                results.append(ChatResult(request_id=req.id, text=o.text, finish_reason=o.finish_reason,
                                          prompt_tokens=len(out.prompt_token_ids or []),
                                          completion_tokens=len(o.token_ids), top_logprobs=top))
            return results
