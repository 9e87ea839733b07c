"""The process that holds a vLLM engine: ``python -m tapir_exp.vllm_worker <in_fd> <out_fd>``.

Started by :class:`tapir_exp.vllm_engine.EngineProcess` (the vLLM oracle backend and ``generation=vllm``),
usually in another venv (vLLM pins its own torch and transformers), so this module imports only the
standard library, vLLM and :mod:`tapir_exp.shorten` (standard library only). It reads one JSON line (the engine settings), builds the engine, answers
``{"ready": ...}`` and then serves one JSON-line command at a time on the pipes it was given (stdout and
stderr stay free for vLLM's own log). When it exits, every byte of device memory the engine held is
back: that is how the oracle engine gives the GPUs to training and how each generation call leaves them.

- ``chat``: oracle requests, one ``LLM.chat`` call per group of requests (with prefill / without: vLLM
  takes ``continue_final_message`` per call), per-request sampling parameters, results in request order.
  A prompt that does not fit the context fails alone (checked before the call); if vLLM still rejects the
  batched call, the group is re-run one request at a time so that only the bad ones fail.
- ``generate``: the student's answers, one ``LLM.chat`` call; a prompt that leaves less than
  ``max_new_tokens`` of the context loses the middle of its longest content, marked
  (:func:`tapir_exp.shorten.fit_chat`, which the other generators and the local oracle use too).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

from tapir_exp.shorten import fit_chat

Messages = list[dict[str, str]]


def memory_utilization(cap: float, free_total: list[tuple[int, int]], margin: float = 0.02) -> float:
    """The ``gpu_memory_utilization`` to start vLLM with on devices whose (free, total) bytes are given.

    vLLM takes that fraction of each device's *total* memory and refuses to start when less than that is
    free (a training engine not torn down yet, another worker). So: the configured cap, or the free share
    of the fullest device minus a small margin, whichever is lower."""
    if not free_total:
        return cap
    share = min(free / total for free, total in free_total) - margin
    if share < 0.05:
        worst = min(free_total, key=lambda ft: ft[0] / ft[1])
        raise RuntimeError(f"only {worst[0] / 2**30:.1f} of {worst[1] / 2**30:.1f} GiB free on a GPU given to "
                           f"this vLLM worker: something else holds the device")
    return round(min(cap, share), 4)


def _visible_device_memory() -> list[tuple[int, int]]:
    """(free, total) bytes of each GPU this process sees; [] without CUDA (the CPU build: vLLM ignores
    gpu_memory_utilization there and sizes its KV cache from VLLM_CPU_KVCACHE_SPACE)."""
    import torch

    if not torch.cuda.is_available():
        return []
    # This creates a CUDA context in this process; it is measured as used, so the share accounts for it.
    return [torch.cuda.mem_get_info(i) for i in range(torch.cuda.device_count())]


class Engine:
    def __init__(self, settings: dict[str, Any]):
        if settings.get("cpus"):
            os.sched_setaffinity(0, settings["cpus"])  # before vLLM starts: its CPU threads bind within these
        from vllm import LLM

        kw = dict(settings["engine"])
        free_total = _visible_device_memory()
        if free_total:
            kw["gpu_memory_utilization"] = memory_utilization(float(kw["gpu_memory_utilization"]), free_total)
        self.llm = LLM(**kw)
        self.tok = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.chat_calls = 0
        self.info = {"pid": os.getpid(), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                     "cpus": sorted(os.sched_getaffinity(0)), "cuda_devices": len(free_total),
                     "gpu_memory_utilization": kw.get("gpu_memory_utilization") if free_total else None,
                     "max_model_len": self.max_model_len}

    # ------------------------------------------------------------------ helpers
    def _chat(self, convs: list[Messages], params: Any, prefill: bool) -> list[Any]:
        self.chat_calls += 1
        return self.llm.chat(convs, params, use_tqdm=False, add_generation_prompt=not prefill,
                             continue_final_message=prefill)

    def prompt_len(self, conv: Messages, prefill: bool = False) -> int:
        return len(self.tok.apply_chat_template(conv, tokenize=True, return_dict=False,
                                                add_generation_prompt=not prefill, continue_final_message=prefill))

    @staticmethod
    def _output(out: Any, top_logprobs: bool) -> dict[str, Any]:
        o = out.outputs[0]
        top = None
        if top_logprobs and o.logprobs:
            top = [{lp.decoded_token: lp.logprob for lp in pos.values()} for pos in o.logprobs]
        return {"text": o.text, "finish_reason": o.finish_reason, "prompt_tokens": len(out.prompt_token_ids or []),
                "completion_tokens": len(o.token_ids), "top_logprobs": top}

    # ------------------------------------------------------------------ commands
    def info_(self) -> dict[str, Any]:
        """This process, its engine's processes (they hold the device memory) and the calls so far."""
        children = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as fh:
                children += [int(p) for p in fh.read().split()]
        return {"info": self.info, "children": sorted(children), "chat_calls": self.chat_calls}

    def chat(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        from vllm import SamplingParams

        results: list[dict[str, Any] | None] = [None] * len(requests)
        groups: dict[bool, list[int]] = {}
        convs: list[Messages] = []
        for i, r in enumerate(requests):
            prefill = bool(r.get("prefill"))
            conv = r["messages"] + ([{"role": "assistant", "content": r["prefill"]}] if prefill else [])
            convs.append(conv)
            n = self.prompt_len(conv, prefill)
            if n >= self.max_model_len:  # vLLM would reject the whole batched call for this one
                results[i] = {"error": f"prompt of {n} tokens does not fit max_model_len={self.max_model_len} "
                                       "(at least one token must be left for the answer)"}
                continue
            groups.setdefault(prefill, []).append(i)
        for prefill, idx in groups.items():
            params = [SamplingParams(max_tokens=requests[i]["max_tokens"], temperature=requests[i]["temperature"],
                                     top_p=requests[i]["top_p"], seed=requests[i]["seed"],
                                     stop=requests[i]["stop"] or None, logprobs=requests[i]["logprobs"])
                      for i in idx]
            try:
                outs: list[Any] = self._chat([convs[i] for i in idx], params, prefill)
            except Exception:  # noqa: BLE001 - one request vLLM rejects aborts the call: find which
                outs = []
                for i, p in zip(idx, params, strict=True):
                    try:
                        outs.append(self._chat([convs[i]], [p], prefill)[0])
                    except Exception as e:  # noqa: BLE001 - this request's own failure
                        outs.append(e)
            for i, out in zip(idx, outs, strict=True):
                results[i] = ({"error": f"{type(out).__name__}: {out}"} if isinstance(out, Exception)
                              else self._output(out, requests[i]["logprobs"] is not None))
        return {"results": results, "chat_calls": self.chat_calls}

    def generate(self, conversations: list[Messages], max_new_tokens: int, temperature: float, top_p: float,
                 seed: int) -> dict[str, Any]:
        from vllm import SamplingParams

        budget = self.max_model_len - int(max_new_tokens)
        fitted, cut = [], []
        for conv in conversations:
            fit = fit_chat(conv, self.tok, budget)  # raises PromptTooLong (a ValueError) when nothing can fit
            fitted.append(fit.messages)
            cut.append(fit.removed)
        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        outs = self._chat(fitted, params, prefill=False)
        gens = [{"text": o.outputs[0].text, "completion_tokens": len(o.outputs[0].token_ids),
                 "finish_reason": "length" if o.outputs[0].finish_reason == "length" else "stop",
                 "prompt_tokens": len(o.prompt_token_ids or []), "shortened": n}
                for o, n in zip(outs, cut, strict=True)]
        return {"generations": gens, "chat_calls": self.chat_calls}


def main(in_fd: int, out_fd: int) -> int:
    rx = os.fdopen(in_fd, "r", encoding="utf-8")
    tx = os.fdopen(out_fd, "w", encoding="utf-8")

    def send(msg: dict[str, Any]) -> None:
        tx.write(json.dumps(msg) + "\n")
        tx.flush()

    try:
        engine = Engine(json.loads(rx.readline()))
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        send({"error": traceback.format_exc()})
        return 1
    send({"ready": True, "info": engine.info})
    for line in rx:
        msg = json.loads(line)
        if msg["op"] == "exit":
            break
        try:
            op = {"chat": engine.chat, "generate": engine.generate, "info": engine.info_}[msg["op"]]
            send(op(**msg.get("args", {})))
        except Exception:  # noqa: BLE001 - the whole command failed: the parent raises it
            send({"error": traceback.format_exc()})
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
