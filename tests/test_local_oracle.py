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


def test_keys_and_values_are_appended_in_place_and_change_no_answer(backend, monkeypatch):
    """The local oracle's cache writes each generated token's keys and values into a buffer reserved at the
    prompt's forward pass (no per-step copy of the whole cache); texts and log-probabilities are bitwise those
    of transformers' own concatenating cache, with and without a shared prefix."""
    import transformers

    import tapir_exp.llm.kv_cache as kv_cache
    import tapir_exp.llm.local as local

    used: list = []

    class Recorded(kv_cache.GrowingCache):
        def __init__(self, reserve: int = 0) -> None:
            super().__init__(reserve)
            used.append(self)

    rubric = " ".join(WORDS * 2)
    reqs = [ChatRequest.of([{"role": "user", "content": f"{rubric} {' '.join(WORDS[i:i + 2 + 3 * i])}"}],
                           id=f"judge/{i}", max_tokens=12, logprobs=True, top_logprobs=5) for i in range(4)]
    monkeypatch.setattr(kv_cache, "GrowingCache", Recorded)
    for min_shared in (local.MIN_SHARED_PREFIX, 10_000):
        monkeypatch.setattr(local, "MIN_SHARED_PREFIX", min_shared)
        used.clear()
        in_place = backend._generate_all(reqs)
        assert len(used) == 1 and len(used[0].layers) == 2
        for layer in used[0].layers:  # one buffer for the batch (plus one at batch size 1 for a shared prefix)
            assert layer.allocations == (2 if min_shared < 10_000 else 1)
            assert layer.keys.data_ptr() == layer._buffers[0].data_ptr()
            assert layer.get_seq_length() > 12  # the prompt and the generated tokens are all there
        monkeypatch.setattr(kv_cache, "GrowingCache", lambda reserve=0: transformers.DynamicCache())
        concatenated = backend._generate_all(reqs)
        monkeypatch.setattr(kv_cache, "GrowingCache", Recorded)
        assert [r.text for r in in_place] == [r.text for r in concatenated]
        assert [r.top_logprobs for r in in_place] == [r.top_logprobs for r in concatenated]


def test_the_growing_cache_layer_keeps_dynamic_semantics_through_crop_and_batch_selection():
    """Crop, batch selection and appends past the reserve give the keys and values transformers' DynamicLayer
    gives for the same calls."""
    import torch
    from transformers.cache_utils import DynamicLayer

    from tapir_exp.llm.kv_cache import GrowingLayer

    g = torch.Generator().manual_seed(0)
    steps = [torch.randn(3, 2, n, 4, generator=g) for n in (5, 1, 1, 3, 1)]
    grow, plain = GrowingLayer(reserve=2), DynamicLayer()
    for i, kv in enumerate(steps):
        if i == 2:
            grow.crop(-2), plain.crop(-2)
        if i == 4:
            pick = torch.tensor([2, 0])
            grow.batch_select_indices(pick), plain.batch_select_indices(pick)
            kv = kv[:2]
        k1, v1 = grow.update(kv, kv * 2)
        k2, v2 = plain.update(kv, kv * 2)
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    assert grow.allocations == 3  # the first update, growth past the reserve, and after the batch selection
