"""``student=tiny_char``: a small random-init Llama with a character-level tokenizer, sized to learn the
skills world's tasks on a 2-core CPU in minutes (every digit and bracket is its own token)."""

from __future__ import annotations

import string
from pathlib import Path

CHAT = ("{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}{% elif m['role'] == "
        "'assistant' %}<|assistant|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = ["<pad>", "<unk>", "<s>", "<|end|>", "<|user|>", "<|assistant|>"]


class CharLlamaInit:
    def __init__(self, hidden_size: int = 192, intermediate_size: int = 512, num_hidden_layers: int = 4,
                 num_attention_heads: int = 4, max_position_embeddings: int = 512, seed: int = 0):
        self.kw = dict(hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                       num_key_value_heads=num_attention_heads, max_position_embeddings=max_position_embeddings)
        self.seed = seed

    def __call__(self, out_dir: str | Path, corpus: list[str] | None = None, chat_template: str | None = None) -> None:
        import torch
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        chars = sorted(set(string.printable) | {c for text in corpus or [] for c in text})
        vocab = {tok: i for i, tok in enumerate(SPECIALS)}
        for c in chars:
            vocab.setdefault(c, len(vocab))
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                     eos_token="<|end|>", additional_special_tokens=["<|user|>", "<|assistant|>"])
        hf.chat_template = CHAT
        config = LlamaConfig(vocab_size=len(hf), pad_token_id=hf.pad_token_id, bos_token_id=hf.bos_token_id,
                             eos_token_id=hf.eos_token_id, tie_word_embeddings=True, **self.kw)
        torch.manual_seed(self.seed)
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = hf.pad_token_id
        model.save_pretrained(out_dir)
        hf.save_pretrained(out_dir)
