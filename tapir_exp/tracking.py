"""Experiment tracking: W&B (online or offline), CSV, or none.

Every tracker appends each metrics row to ``<run_dir>/metrics.jsonl`` first, so a run can be compared with
``tapir-report`` whatever the logger: one row per round (``{"step": round, ...}``) and, while a round trains,
one per optimizer step (``{"round": r, "train_step": s, "train_step/loss": ...}``, from
:mod:`tapir_exp.student.live_metrics`). The W&B run id is derived from the run directory, so a resumed or
requeued job continues the same W&B run (``resume="allow"``) instead of starting a new one; rounds (and
training steps) that an earlier attempt already logged are not logged again. In W&B, round-level metrics
are plotted against ``round`` and per-step ones against ``train_step/progress`` (round + fraction trained);
runs are grouped by experiment (``logger.group`` to override) with the setting - the run name without its
seed - as ``job_type``, so W&B's grouping shows seed means per setting.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tapir_exp.files import atomic_open, stable_hash

log = logging.getLogger("tapir")


class NullTracker:
    """Logs only to ``metrics.jsonl`` in the run directory (nothing when there is none)."""

    def __init__(self, run_dir: str | None = None, run_config: dict | None = None, **_: Any):
        self.run_dir = Path(run_dir) if run_dir else None
        # What earlier attempts of this run logged: those rounds and training steps are not logged again.
        self.logged_rounds: set[int] = set()
        self.logged_steps: dict[int, int] = {}
        path = self.run_dir / "metrics.jsonl" if self.run_dir else None
        for line in (path.read_text(encoding="utf-8").splitlines() if path and path.is_file() else []):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if "train_step" in row:
                self.logged_steps[row["round"]] = max(self.logged_steps.get(row["round"], -1), row["train_step"])
            elif row.get("step") is not None:
                self.logged_rounds.add(row["step"])

    def _append(self, name: str, row: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=float) + "\n")

    def reused(self, step: int | None) -> bool:
        """Round ``step`` was logged by an earlier attempt of this run."""
        return step is not None and step in self.logged_rounds

    def train_step_reused(self, rnd: int, step: int) -> bool:
        """Optimizer step ``step`` of round ``rnd`` (or the whole round) was logged by an earlier attempt."""
        return self.reused(rnd) or step <= self.logged_steps.get(rnd, -1)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.reused(step):
            self._append("metrics.jsonl", {"step": step, **metrics})

    def log_train_step(self, rnd: int, step: int, metrics: dict[str, float]) -> bool:
        """One optimizer step of round ``rnd``; False (nothing logged) when an earlier attempt logged it."""
        if self.train_step_reused(rnd, step):
            return False
        self._append("metrics.jsonl", {"round": rnd, "train_step": step,
                                       **{f"train_step/{k}": v for k, v in metrics.items()}})
        return True

    def log_histogram(self, key: str, values: list[float], step: int | None = None) -> None:
        pass

    def log_series(self, key: str, values: list[float], step: int | None = None) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, name: str, kind: str, step: int | None = None) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class LazyTracker(NullTracker):
    """The configured tracker, built on the first call that would log something new.

    A finished run run again logs nothing new (every round is in ``metrics.jsonl``), so it starts no W&B
    run at all: ``wandb.init`` costs seconds and a service process. What an earlier attempt logged is read
    here the same way the real tracker reads it, so both skip the same calls. A run with rounds still to
    log starts it at once (:meth:`start_unless_logged`), so a W&B setting it refuses stops the run before
    any work, not after the first round."""

    def __init__(self, build: Any, run_dir: str | Path):
        super().__init__(str(run_dir))
        self._build, self.inner = build, None

    def start_unless_logged(self, rounds: list[int] | None) -> LazyTracker:
        """Start now unless every round of ``rounds`` was logged by an earlier attempt (``None``: start)."""
        if rounds is None or not set(rounds) <= self.logged_rounds:
            self._started()
        return self

    def _started(self) -> Any:
        if self.inner is None:
            self.inner = self._build()
        return self.inner

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.reused(step):
            self._started().log_metrics(metrics, step)

    def log_train_step(self, rnd: int, step: int, metrics: dict[str, float]) -> bool:
        if self.train_step_reused(rnd, step):
            return False
        return self._started().log_train_step(rnd, step, metrics)

    def log_histogram(self, key: str, values: list[float], step: int | None = None) -> None:
        if not self.reused(step):
            self._started().log_histogram(key, values, step)

    def log_series(self, key: str, values: list[float], step: int | None = None) -> None:
        if not self.reused(step):
            self._started().log_series(key, values, step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        if not self.reused(step):
            self._started().log_table(key, columns, rows, step)

    def log_artifact(self, path: str | Path, name: str, kind: str, step: int | None = None) -> None:
        if not self.reused(step):
            self._started().log_artifact(path, name, kind, step)

    def finish(self, exit_code: int = 0) -> None:
        if self.inner is not None:
            self.inner.finish(exit_code=exit_code)


class CSVTracker(NullTracker):
    """``metrics.jsonl`` plus a wide ``metrics.csv`` (one row per round) and ``train_steps.csv`` (one row per
    optimizer step, appended as training runs) for spreadsheets."""

    STEP_COLUMNS = ("round", "train_step", "progress", "loss", "lr", "grad_norm", "tokens_per_s", "nonpad_fraction",
                    "gpu_mem_gb")

    def log_train_step(self, rnd: int, step: int, metrics: dict[str, float]) -> bool:
        if not super().log_train_step(rnd, step, metrics) or self.run_dir is None:
            return False
        path = self.run_dir / "train_steps.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.STEP_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({"round": rnd, "train_step": step, **metrics})
        return True

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        reused = self.reused(step)
        super().log_metrics(metrics, step)
        if self.run_dir is None or reused:
            return
        path = self.run_dir / "metrics.csv"
        rows = []
        if path.exists():
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        rows = [r for r in rows if r.get("step") != str(step)] + [{"step": step, **metrics}]
        cols = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_open(path, newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)


@contextlib.contextmanager
def redacted_argv() -> Iterator[None]:
    """``sys.argv`` with every credential redacted (``config.redact_text``) for the duration of the block."""
    from tapir_exp.config import redact_text

    saved = sys.argv[:]
    sys.argv[1:] = [redact_text(a) for a in saved[1:]]
    try:
        yield
    finally:
        sys.argv[:] = saved


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
        seed = cfg.get("seed")
        with redacted_argv():  # W&B's metadata records the command line, a credential given there included
            self.run = wandb.init(
                project=project, entity=entity, mode=mode, id=run_id, resume="allow",
                name=f"{cfg.get('name', 'tapir')}/{cfg.get('run_name', 'default')}",
                group=group or cfg.get("name"), job_type=setting_of(str(cfg.get("run_name", "default")), job_overrides()),
                tags=[*(tags or []), *([f"seed={seed}"] if seed is not None else [])], config=cfg,
                dir=str(run_dir), settings=wandb.Settings(silent=True, console="off"))
        self._wandb = wandb
        self.run.define_metric("round")
        self.run.define_metric("train_step/progress")
        self.run.define_metric("train_step/*", step_metric="train_step/progress")
        self._defined: set[str] = set()

    def _log_round(self, data: dict[str, Any], step: int | None) -> None:
        for key in data.keys() - self._defined:  # plotted against the round, not W&B's own step counter
            self.run.define_metric(key, step_metric="round")
            self._defined.add(key)
        self.run.log({**data, "round": step})

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.reused(step):
            return
        super().log_metrics(metrics, step)
        self._log_round({k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)},
                        step)

    def log_train_step(self, rnd: int, step: int, metrics: dict[str, float]) -> bool:
        if not super().log_train_step(rnd, step, metrics):
            return False
        self.run.log({"train_step/round": rnd, "train_step/step": step,
                      **{f"train_step/{k}": v for k, v in metrics.items()}})
        return True

    def log_histogram(self, key: str, values: list[float], step: int | None = None) -> None:
        if values and not self.reused(step):
            self._log_round({key: self._wandb.Histogram(values)}, step)

    def log_series(self, key: str, values: list[float], step: int | None = None) -> None:
        if values and not self.reused(step):
            table = self._wandb.Table(columns=["step", "value"], data=[[i, v] for i, v in enumerate(values)])
            self._log_round({key: self._wandb.plot.line(table, "step", "value", title=key)}, step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        if not self.reused(step):
            self._log_round({key: self._wandb.Table(columns=columns, data=rows)}, step)

    def log_artifact(self, path: str | Path, name: str, kind: str, step: int | None = None) -> None:
        if self.reused(step):  # logged with that round by an earlier attempt
            return
        art = self._wandb.Artifact(name.replace("/", "-"), type=kind)
        p = Path(path)
        (art.add_dir if p.is_dir() else art.add_file)(str(p))
        self.run.log_artifact(art)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def setting_of(run_name: str, overrides: list[str] | None = None, max_len: int = 64) -> str:
    """What runs differing only in their seed share: the command-line overrides without ``seed=...`` (those
    that name the run, sorted as in the run name), or the run name without it. At most ``max_len``
    characters (W&B's job_type limit), cut with a hash of the whole when longer."""
    if overrides is not None:
        from tapir_exp.config import run_name_from_overrides

        kept = sorted(o for o in overrides if not re.match(r"[+~]?(seed|logger|mode)=", o))  # not results
        return run_name_from_overrides(",".join(kept), max_len=max_len)
    setting = re.sub(r"(^|,)seed=[^,]*", "", run_name).strip(",") or "default"
    return setting if len(setting) <= max_len else f"{setting[:max_len - 11]}-{stable_hash(setting)[:10]}"


def job_overrides() -> list[str] | None:
    """The running Hydra job's task overrides (None outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
