"""Experiment tracking: W&B (online or offline), CSV, or none.

Every tracker appends each metrics row to ``<run_dir>/metrics.jsonl`` first, so a run can be compared with
``tapir-report`` whatever the logger. The W&B run id is derived from the run directory, so a resumed or
requeued job continues the same W&B run (``resume="allow"``) instead of starting a new one.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from tapir_exp.store import stable_hash

log = logging.getLogger("tapir")


class NullTracker:
    """Logs only to ``metrics.jsonl`` in the run directory (nothing when there is none)."""

    def __init__(self, run_dir: str | None = None, run_config: dict | None = None, **_: Any):
        self.run_dir = Path(run_dir) if run_dir else None

    def _append(self, name: str, row: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=float) + "\n")

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._append("metrics.jsonl", {"step": step, **metrics})

    def log_histogram(self, key: str, values: list[float], step: int | None = None) -> None:
        pass

    def log_series(self, key: str, values: list[float], step: int | None = None) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, name: str, kind: str) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class CSVTracker(NullTracker):
    """``metrics.jsonl`` plus a wide ``metrics.csv`` (one row per round) for spreadsheets."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        if self.run_dir is None:
            return
        path = self.run_dir / "metrics.csv"
        rows = []
        if path.exists():
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        rows = [r for r in rows if r.get("step") != str(step)] + [{"step": step, **metrics}]
        cols = list(dict.fromkeys(k for r in rows for k in r))
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)


class WandbTracker(NullTracker):
    """One W&B run per pipeline run. ``mode=null``: online when ``WANDB_API_KEY`` is set, offline otherwise
    (never prompts). The config it receives is already redacted."""

    def __init__(self, run_dir: str, run_config: dict | None = None, project: str = "tapir-exp", entity: str | None = None,
                 mode: str | None = None, group: str | None = None, tags: list[str] | None = None, **_: Any):
        super().__init__(run_dir, run_config)
        import wandb

        mode = mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        cfg = run_config or {}
        run_id = "tapir-" + stable_hash(str(Path(run_dir).resolve()))[:16]
        self.run = wandb.init(project=project, entity=entity, mode=mode, id=run_id, resume="allow",
                              name=f"{cfg.get('name', 'tapir')}/{cfg.get('run_name', 'default')}",
                              group=group or cfg.get("name"), tags=tags, config=cfg, dir=str(run_dir),
                              settings=wandb.Settings(silent=True, console="off"))
        self._wandb = wandb

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        data = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.run.log({**data, "round": step})

    def log_histogram(self, key: str, values: list[float], step: int | None = None) -> None:
        if values:
            self.run.log({key: self._wandb.Histogram(values), "round": step})

    def log_series(self, key: str, values: list[float], step: int | None = None) -> None:
        if values:
            table = self._wandb.Table(columns=["step", "value"], data=[[i, v] for i, v in enumerate(values)])
            self.run.log({key: self._wandb.plot.line(table, "step", "value", title=key), "round": step})

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        self.run.log({key: self._wandb.Table(columns=columns, data=rows), "round": step})

    def log_artifact(self, path: str | Path, name: str, kind: str) -> None:
        art = self._wandb.Artifact(name.replace("/", "-"), type=kind)
        p = Path(path)
        (art.add_dir if p.is_dir() else art.add_file)(str(p))
        self.run.log_artifact(art)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
