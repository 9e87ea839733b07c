"""The LLaMA-2 chat template against Meta's reference formatting (``chat_completion`` in meta-llama/llama
``llama/generation.py``): the system message folded into the first user turn as ``<<SYS>>`` block, every
user/assistant pair as ``<s>[INST] user [/INST] answer </s>``, contents stripped (the first turn after the system block is
stripped as one string, so a user message's leading space stays) — written out by hand here."""

from __future__ import annotations

import pytest
from jinja2.exceptions import TemplateError

from tapir_exp.student.models import apply_chat_template


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    t = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    apply_chat_template(t, "llama2")
    return t


SYS = {"role": "system", "content": "You are terse."}
U1, A1 = {"role": "user", "content": " What is 2+2? "}, {"role": "assistant", "content": "4.\n"}
U2, A2 = {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": " 6."}


@pytest.mark.parametrize(("messages", "generation_prompt", "expected"), [
    ([U1], True, "<s>[INST] What is 2+2? [/INST]"),
    ([SYS, U1], True, "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\n What is 2+2? [/INST]"),
    ([U1, A1], False, "<s>[INST] What is 2+2? [/INST] 4. </s>"),
    # turn 2 (MT-Bench): its own <s>, and the system prompt stays in turn 1
    ([SYS, U1, A1, U2], True,
     "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\n What is 2+2? [/INST] 4. </s><s>[INST] And 3+3? [/INST]"),
    ([U1, A1, U2, A2], False, "<s>[INST] What is 2+2? [/INST] 4. </s><s>[INST] And 3+3? [/INST] 6. </s>"),
    ([SYS, U1, A1, U2, A2], False,
     "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\n What is 2+2? [/INST] 4. </s><s>[INST] And 3+3? [/INST] 6. </s>"),
])
def test_llama2_template_matches_the_reference_format(tok, messages, generation_prompt, expected):
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt) == expected


def test_training_prompt_is_a_prefix_of_the_full_conversation(tok):
    """data.encode masks the prompt by prefix: the multi-turn prompt must be a prefix of prompt + answer."""
    conv = [SYS, U1, A1, U2, A2]
    prompt = tok.apply_chat_template(conv[:-1], tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(conv, tokenize=False).startswith(prompt)


@pytest.mark.parametrize("messages", [[U1, U2], [A1], [U1, SYS, A1], [SYS, A1]])
def test_llama2_template_rejects_turns_out_of_order(tok, messages):
    with pytest.raises(TemplateError, match="alternate user/assistant"):
        tok.apply_chat_template(messages, tokenize=False)
