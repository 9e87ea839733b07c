"""Test-wide settings: offline everything, W&B offline, no tokenizer thread pools fighting over 2 cores."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Never pick up a developer's real key in tests.
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("WANDB_API_KEY", None)
