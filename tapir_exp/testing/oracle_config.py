"""An oracle config for every role pointing at a :class:`~tapir_exp.testing.openai_server.FakeOpenAIServer`
(tests and benchmarks build their oracle from it; short timeouts and backoffs so fault injection is quick)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tapir_exp.llm.base import ROLES


def oracle_cfg(base_url: str, cache: Path, **limits) -> DictConfig:
    lim = {"concurrency": 4, "requests_per_minute": None, "tokens_per_minute": None, "timeout_s": 5.0,
           "max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "parse_retries": 2, **limits}
    return OmegaConf.create({
        "backends": {"openai": {"_target_": "tapir_exp.llm.openai_backend.OpenAIBackend", "model": "fake-model",
                                "base_url": base_url, "api_key": "test-key"}},
        "roles": {r: {"backend": "openai", "max_tokens": 32, "temperature": 0.0,
                      **({"scoring": "logprob"} if r in ("judge", "eval_judge") else {})} for r in ROLES},
        "limits": lim, "cache": {"enabled": True, "path": str(cache)},
        "prices": {"fake-model": {"prompt": 1.0, "completion": 2.0}}, "progress": False})
