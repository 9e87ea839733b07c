"""The parts of the vLLM worker that need no engine: fitting a long prompt into the context as the worker
does it (tapir_exp.shorten.fit_chat, with SmolLM2's real tokenizer and chat template), sizing
gpu_memory_utilization from free memory, and giving each worker its devices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tapir_exp.errors import ConfigError
from tapir_exp.shorten import MARK, PromptTooLong, fit_chat
from tapir_exp.vllm_engine import plan_workers
from tapir_exp.vllm_worker import memory_utilization


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from tapir_exp.model_files import smollm2_hf_dir

    return AutoTokenizer.from_pretrained(smollm2_hf_dir(Path.home() / ".cache" / "tapir" / "models"))


def long_instruction(n_words: int) -> str:
    return "BEGIN " + " ".join(f"w{i % 997}" for i in range(n_words)) + " END: now answer in one word."


def test_a_20k_token_instruction_keeps_the_template_and_both_ends(tok):
    def count(conv):
        return len(tok.apply_chat_template(conv, tokenize=True, return_dict=False, add_generation_prompt=True))

    text = long_instruction(8000)
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    assert count(conv) > 20_000
    budget = 1000
    fit = fit_chat(conv, tok, budget)
    fitted, cut = fit.messages, fit.removed
    rendered = tok.apply_chat_template(fitted, tokenize=False, add_generation_prompt=True)
    assert budget - 20 <= count(fitted) <= budget  # shortened to the budget, not far below it
    assert cut > 19_000 and MARK.split("{n}")[0] in fitted[1]["content"]
    assert fitted[1]["content"].startswith("BEGIN w0 w1") and fitted[1]["content"].endswith("now answer in one word.")
    assert fitted[0] == conv[0]  # the short system message is untouched
    assert rendered.endswith("<|im_start|>assistant\n")  # the generation prompt survives
    assert rendered.count("<|im_start|>") == 3
    # a prompt that fits is left alone
    short = [{"role": "user", "content": "hi"}]
    assert (fit_chat(short, tok, budget).messages, fit_chat(short, tok, budget).removed) == (short, 0)


def test_two_long_messages_are_both_cut_when_one_is_not_enough(tok):
    def count(conv):
        return len(tok.apply_chat_template(conv, tokenize=True, return_dict=False, add_generation_prompt=True))

    conv = [{"role": "user", "content": long_instruction(600)}, {"role": "assistant", "content": long_instruction(500)},
            {"role": "user", "content": long_instruction(550)}]
    fit = fit_chat(conv, tok, 300)
    fitted, cut = fit.messages, fit.removed
    assert count(fitted) <= 300 and cut > 0
    assert [m["role"] for m in fitted] == ["user", "assistant", "user"]
    assert sum("tokens omitted" in m["content"] for m in fitted) >= 2
    with pytest.raises(PromptTooLong):
        fit_chat(conv, tok, 5)


def test_memory_utilization_follows_what_is_free():
    gib = 2**30
    assert memory_utilization(0.85, []) == 0.85  # CPU: the configured value, which vLLM's CPU build ignores
    assert memory_utilization(0.85, [(80 * gib, 80 * gib)]) == 0.85  # a free GPU: the cap
    # rank 0 of a training engine still holds 30 of 80 GiB on the first device: the fuller device decides
    assert memory_utilization(0.85, [(50 * gib, 80 * gib), (79 * gib, 80 * gib)]) == pytest.approx(0.605)
    with pytest.raises(RuntimeError, match="1.0 of 80.0 GiB free"):
        memory_utilization(0.85, [(1 * gib, 80 * gib)])


def test_each_worker_gets_its_own_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    plans = plan_workers(2, 2, None, "generation.devices")
    assert [p["env"]["CUDA_VISIBLE_DEVICES"] for p in plans] == ["4,5", "6,7"]
    assert all(p["cpus"] is None for p in plans)  # GPUs: the cores are not split
    plans = plan_workers(4, 1, [0, 1, 2, 3], "generation.devices")
    assert [p["env"]["CUDA_VISIBLE_DEVICES"] for p in plans] == ["0", "1", "2", "3"]
    with pytest.raises(ConfigError, match="need 6 devices; given 4"):
        plan_workers(3, 2, None, "generation.devices")
    # no GPU: each worker gets its share of this process's cores, and vLLM binds its threads to them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    plans = plan_workers(2, 1, None, "generation.devices")
    assert plans[0]["cpus"] + plans[1]["cpus"] == cores[:len(cores) // 2 * 2]
    assert not set(plans[0]["cpus"]) & set(plans[1]["cpus"])
    assert plans[1]["env"]["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, plans[1]["cpus"]))
    assert "CUDA_VISIBLE_DEVICES" not in plans[0]["env"]
