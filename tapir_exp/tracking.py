"""Experiment tracking: W&B (online/offline), CSV, or none. Every tracker also appends to
``<run_dir>/metrics.jsonl`` so runs can be compared offline."""

from __future__ import annotations

from typing import Any


class NullTracker:
    """Logs nothing (the run directory still holds every artifact)."""

    def __init__(self, run_dir: str | None = None, config: dict | None = None, **_: Any):
        self.run_dir = run_dir

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass
