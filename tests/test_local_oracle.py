"""The in-process oracle backend samples a batch of requests with different seeds in one generate() call,
each row from its own seeded generator, and gives each request the text transformers' own sampling gives it
alone (``torch.manual_seed(seed)`` + ``do_sample=True``, batch size 1); and the CLI's OpenMP wait policy."""

from __future__ import annotations

import pytest

from tapir_exp.llm.base import ChatRequest

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "to", "the", "red", "barn", "where", "seven", "small", "dogs", "slept", "all", "day"]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """A tiny random Llama (its next-token distribution is wide, so samples differ by seed) behind LocalBackend."""
    from tapir_exp.llm.local import LocalBackend
    from tapir_exp.student.models import TinyLlamaInit

    path = tmp_path_factory.mktemp("tiny-oracle")
    TinyLlamaInit(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=256)(path, corpus=[" ".join(WORDS)] * 30)
    b = LocalBackend(model=str(path), batch_size=8)
    b._load()
    return b


def sampled(i: int, seed: int, top_p: float = 0.9) -> ChatRequest:
    prompt = " ".join(WORDS[: 3 + 4 * i])  # different lengths: the batch is left-padded
    return ChatRequest.of([{"role": "user", "content": prompt}], id=f"expand/{i}", max_tokens=24, temperature=0.8,
                          top_p=top_p, seed=seed)


def alone(backend, req: ChatRequest) -> str:
    """What transformers' own sampling writes for this request by itself."""
    import torch

    tok, model = backend._tok, backend._model
    enc = tok([backend.fit(req).text], return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(req.seed)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=req.max_tokens, do_sample=True, temperature=req.temperature,
                             top_p=req.top_p, pad_token_id=tok.pad_token_id)
    ids = out[0, enc["input_ids"].shape[1]:].tolist()
    eos = tok.eos_token_id
    return tok.decode(ids[: ids.index(eos)] if eos in ids else ids, skip_special_tokens=True)


@pytest.mark.parametrize("top_p", [0.9, 1.0])
def test_sampled_requests_with_different_seeds_share_one_batch_and_sample_as_alone(backend, top_p):
    reqs = [sampled(i, seed, top_p) for i, seed in enumerate([11, 12, 13, 14, 15])]
    before = backend.profile["expand"]["batches"]
    out = backend._generate_all(reqs)
    assert backend.profile["expand"]["batches"] == before + 1  # one generate() call for five seeds
    texts = [r.text for r in out]
    assert texts == [alone(backend, r) for r in reqs]
    assert len(set(texts)) == len(texts)  # the seeds matter (a shared generator would not repeat this)


def test_same_seed_same_text_whatever_the_batch(backend):
    a = backend._generate_all([sampled(1, 7)])[0].text
    b = backend._generate_all([sampled(0, 3), sampled(1, 7), sampled(2, 9)])[1].text
    assert a == b


def test_openmp_threads_sleep_unless_the_user_says_otherwise(monkeypatch):
    import os

    from tapir_exp.cli import cpu_thread_defaults

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cpu_thread_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cpu_thread_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_shared_prompt_prefix_is_computed_once_and_changes_no_answer(backend, monkeypatch):
    """Judge-like prompts that share their first ~40 words: the backend computes the prefix's keys and values
    once (one forward pass at batch size 1), then only the rest of each row; greedy texts and log-probabilities
    equal those of plain left padding."""
    import tapir_exp.llm.local as local

    rubric = " ".join(WORDS * 2)
    reqs = [ChatRequest.of([{"role": "user", "content": f"{rubric} {' '.join(WORDS[i:i + 2 + 3 * i])}"}],
                           id=f"judge/{i}", max_tokens=6, logprobs=True, top_logprobs=5) for i in range(4)]
    enc, shared = backend._encode([backend.fit(r) for r in reqs])
    assert shared >= 40 and enc["attention_mask"][:, :shared].all()  # the prefix sits before the padding
    before = backend.profile["judge"]["shared_prefix_tokens"]
    widths: list[int] = []  # tokens each forward pass reads
    hook = backend._model.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]) if "input_ids" in kw else None, with_kwargs=True)
    try:
        with_prefix = backend._generate_all(reqs)
    finally:
        hook.remove()
    width = enc["input_ids"].shape[1]
    assert widths[:2] == [shared, width - shared]  # the prefix once (batch 1), then only the rest of each row
    assert backend.profile["judge"]["shared_prefix_tokens"] == before + shared * 3
    assert 0 <= local.profile_summary(backend.profile)["judge"]["padding_share"] < 0.5  # the prefix counts once
    monkeypatch.setattr(local, "MIN_SHARED_PREFIX", 10_000)  # plain left padding
    plain = backend._generate_all(reqs)
    assert [r.text for r in with_prefix] == [r.text for r in plain]
    for a, b in zip(with_prefix, plain, strict=True):
        assert len(a.top_logprobs) == len(b.top_logprobs)
        for pa, pb in zip(a.top_logprobs, b.top_logprobs, strict=True):
            top = max(pb, key=pb.get)
            assert max(pa, key=pa.get) == top and abs(pa[top] - pb[top]) < 1e-4
