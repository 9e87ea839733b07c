"""No silent truncation: a 20,000-token instruction goes through the in-process oracle backend, a judge
prompt holding two long answers, HF student generation and training-example encoding. Each keeps the chat
template and the prefill, shortens content in the middle with a visible marker (or, for training, cuts the
answer's tail / drops the example), and counts what it did."""

from __future__ import annotations

import random
import re

import pytest

from tapir_exp.prompts import render
from tapir_exp.shorten import MARK, PromptTooLong, fit_chat

MARKED = re.compile(re.escape(MARK).replace(r"\{n\}", r"\d+"))
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama with a ChatML template and a BPE tokenizer trained here (no download)."""
    from transformers import AutoTokenizer

    from tapir_exp.student.models import TinyLlamaInit

    path = tmp_path_factory.mktemp("tiny")
    TinyLlamaInit(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                  max_position_embeddings=512)(path, corpus=[" ".join(WORDS)] * 20)
    return path, AutoTokenizer.from_pretrained(path)


def long_text(tok, n_tokens: int, seed: int, start: str = "BEGIN", end: str = "END") -> str:
    rng = random.Random(seed)
    words = [start]
    while len(words) < n_tokens:  # every word is at least one token
        words.append(rng.choice(WORDS))
    words.append(end)
    text = " ".join(words)
    assert len(tok(text, add_special_tokens=False)["input_ids"]) >= n_tokens
    return text


def test_fit_chat_keeps_template_prefill_head_and_tail(tiny):
    _, tok = tiny
    instruction = long_text(tok, 20_000, 0)
    f = fit_chat([{"role": "user", "content": instruction}], tok, 200, prefill="[[")
    assert f.n_tokens <= 200 and f.removed > 19_000
    assert f.text.startswith("<|im_start|>user\nBEGIN") and f.text.endswith("END<|im_end|>\n<|im_start|>assistant\n[[")
    assert len(MARKED.findall(f.text)) == 1
    with pytest.raises(PromptTooLong):
        fit_chat([{"role": "system", "content": instruction}, {"role": "user", "content": "hi"}], tok, 200)


def test_judge_prompt_with_two_long_answers_shortens_each_answer_evenly(tiny):
    _, tok = tiny
    prompt = render("judge_pair", instruction=long_text(tok, 20_000, 1, "I0", "I1"),
                    answer_1=long_text(tok, 20_000, 2, "A0", "A1"), answer_2=long_text(tok, 20_000, 3, "B0", "B1"))
    f = fit_chat([{"role": "user", "content": prompt}], tok, 1500, prefill="[[")
    text = f.text
    assert f.n_tokens <= 1500 and text.endswith("<|im_start|>assistant\n[[")
    # every section header and the closing instructions survive; each value keeps its head and tail
    for piece in ("[Instruction]\nI0", "I1\n\n[Assistant 1]\nA0", "A1\n\n[Assistant 2]\nB0",
                  "B1\n\nScore each assistant", "for example [[7, 4]]."):
        assert piece in text, piece
    assert len(MARKED.findall(text)) == 3
    answers = (text.split("[Assistant 1]\n")[1].split("\n\n[Assistant 2]")[0],
               text.split("[Assistant 2]\n")[1].split("\n\nScore each")[0])
    sizes = [len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers]
    assert min(sizes) > 100 and abs(sizes[0] - sizes[1]) < 10, sizes  # evenly: neither answer is sacrificed


def test_local_backend_shortens_and_the_ledger_counts_it(tiny, tmp_path):
    from tapir_exp.llm.oracle import Oracle

    path, tok = tiny
    backend = {"_target_": "tapir_exp.llm.local.LocalBackend", "model": str(path), "max_input_tokens": 256,
               "batch_size": 4}
    oracle = Oracle({"backends": {"local": backend},
                     "roles": {"judge": {"backend": "local", "max_tokens": 3, "temperature": 0.0}},
                     "limits": {"concurrency": 1, "timeout_s": 120, "max_retries": 0, "backoff_base_s": 0.01,
                                "backoff_max_s": 0.01, "parse_retries": 0},
                     "cache": {"enabled": False}, "progress": False}, run_dir=tmp_path)
    try:
        long_req = oracle.request("judge", [{"role": "user", "content": long_text(tok, 20_000, 4)}], id="long",
                                  prefill="[[")
        short_req = oracle.request("judge", [{"role": "user", "content": "alpha bravo"}], id="short", prefill="[[")
        seen = oracle.backend_for("judge").fit(long_req)
        assert seen.text.endswith("END<|im_end|>\n<|im_start|>assistant\n[[") and MARKED.search(seen.text)
        results = oracle.chat_many("judge", [long_req, short_req], step="mfd", rnd=1)
        assert [r.ok for r in results] == [True, True]
        assert results[0].prompt_tokens <= 256 and results[0].meta["shortened"] > 19_000
        assert "shortened" not in results[1].meta
        usage = oracle.usage.summary()
        assert usage["by_step"]["mfd"]["shortened"] == 1 and usage["total"]["requests"] == 2
    finally:
        oracle.close()


def test_hf_generation_shortens_long_prompts_and_the_step_counts_them(tiny):
    from tapir_exp.records import Example
    from tapir_exp.steps.respond import student_answers
    from tapir_exp.student.generate import HFGenerator

    path, tok = tiny
    gen = HFGenerator(batch_size=2, max_new_tokens=3, max_input_tokens=128)
    items = [Example(id="long", instruction=long_text(tok, 20_000, 5)), Example(id="short", instruction="alpha")]
    seen = gen.prompts(path, [ex.messages() for ex in items])
    assert seen[0].text.endswith("END<|im_end|>\n<|im_start|>assistant\n") and seen[0].n_tokens <= 128
    answered, counts = student_answers(items, gen, path)
    assert counts["prompts_shortened"] == 1
    assert answered[0].meta["student_prompt_shortened"] > 19_000 and "student_prompt_shortened" not in answered[1].meta


def test_training_keeps_the_prompt_cuts_the_answer_tail_and_drops_prompts_too_long(tiny):
    from tapir_exp.student.data import IGNORE, encode

    _, tok = tiny
    long_instruction = long_text(tok, 20_000, 6)
    long_answer = long_text(tok, 20_000, 7, "ANS", "TAIL")
    convs = [[{"role": "user", "content": long_instruction}, {"role": "assistant", "content": "short answer"}],
             [{"role": "user", "content": "alpha bravo"}, {"role": "assistant", "content": long_answer}],
             [{"role": "user", "content": "alpha"}, {"role": "assistant", "content": "bravo"}]]
    counts: dict[str, int] = {}
    out = encode(tok, convs, 256, counts)
    assert counts == {"examples": 2, "answer_tail_cut": 1, "dropped_prompt_too_long": 1, "dropped_empty_answer": 0}
    cut = out[0]
    prompt = tok.apply_chat_template(convs[1][:1], add_generation_prompt=True, tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert len(cut["input_ids"]) == 256 and cut["input_ids"][:len(p_ids)] == p_ids  # the whole prompt is kept
    assert cut["labels"][:len(p_ids)] == [IGNORE] * len(p_ids) and IGNORE not in cut["labels"][len(p_ids):]
    assert tok.decode(cut["input_ids"][len(p_ids):]).startswith("ANS")  # the answer's head, not its tail


def test_mfd_judge_over_the_local_backend_keeps_both_answers_of_a_long_item(tiny, tmp_path):
    """The MFD step itself: instruction and both answers of 20,000 tokens each, log-probability scoring
    with the `[[` prefill, through the oracle client and the local backend."""
    from tapir_exp.llm.oracle import Oracle
    from tapir_exp.records import Example
    from tapir_exp.steps.judge import judge_mfd

    path, tok = tiny
    backend = {"_target_": "tapir_exp.llm.local.LocalBackend", "model": str(path), "max_input_tokens": 1500}
    oracle = Oracle({"backends": {"local": backend},
                     "roles": {"judge": {"backend": "local", "max_tokens": 4, "temperature": 0.0}},
                     "limits": {"concurrency": 1, "timeout_s": 300, "max_retries": 0, "parse_retries": 0},
                     "cache": {"enabled": False}, "progress": False}, run_dir=tmp_path)
    ex = Example(id="long", instruction=long_text(tok, 20_000, 8, "I0", "I1"),
                 output=long_text(tok, 20_000, 9, "T0", "T1"), meta={"student": long_text(tok, 20_000, 10, "S0", "S1")})
    sent = []
    local = oracle.backend_for("judge")
    fit = local.fit
    local.fit = lambda req: sent.append(fit(req)) or sent[-1]  # observe the prompts the model is given
    try:
        judged, counts = judge_mfd([ex], oracle, delta=0.0, both_orders=True, scoring="logprob", fmt="single",
                                   step="mfd", rnd=1)
        usage = oracle.usage.summary()
    finally:
        oracle.close()
    # every request was answered (a random-init model's rating itself is noise, so it may not parse)
    assert len(sent) == 4 and usage["total"]["requests"] == 4 and usage["total"]["failures"] == 0
    assert set(judged[0].meta["judge"]["orders"]) == {"ts", "st"} and counts["unjudged"] in (0, 1)
    for f in sent:
        assert f.n_tokens <= 1500 and f.text.endswith("for example [[6]].<|im_end|>\n<|im_start|>assistant\n[[")
        assert all(s in f.text for s in ("[Instruction]\nI0", "I1\n\n[Assistant 1]\n", "\n\n[Assistant 2]\n",
                                         "T0", "T1", "S0", "S1"))
        assert len(MARKED.findall(f.text)) == 3
    assert usage["by_step"]["mfd"]["shortened"] == 4
