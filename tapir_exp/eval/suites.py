"""The one eval dispatch: which suites a config enables and how they run, for the pipeline's per-round
evaluation and for ``tapir mode=eval`` alike. Judged suites (AlpacaEval, MT-Bench: the ``eval_judge`` role)
go through :func:`tapir_exp.eval.runner.evaluate_round`; the skills world's exact-answer suite needs no judge."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def enabled_suites(cfg: DictConfig) -> tuple[bool, bool]:
    """(any judged suite on, the skills suite on) under the config's ``eval``."""
    ev = cfg.eval
    judged = bool(ev.alpaca_eval.enabled or ev.mt_bench.enabled)
    skills = bool((ev.get("skills") or {}).get("enabled", False))
    return judged, skills


def needs_generation(cfg: DictConfig, model_outputs: Any = None, mt_bench_answers: Any = None) -> bool:
    """Whether an enabled suite has no answers file, so the model must answer it."""
    ev = cfg.eval
    return bool((ev.alpaca_eval.enabled and not model_outputs) or (ev.mt_bench.enabled and not mt_bench_answers)
                or enabled_suites(cfg)[1])


def evaluate_suites(cfg: DictConfig, model_dir: str | Path | None, oracle: Callable[[], Any], generator: Any,
                    out_dir: str | Path, rnd: int, model_name: str, model_outputs: str | None = None,
                    mt_bench_answers: str | None = None) -> dict[str, float]:
    """Every enabled suite's metrics. ``oracle`` is called only when a judged suite runs (a skills-only eval
    builds no judge)."""
    judged, skills = enabled_suites(cfg)
    metrics: dict[str, float] = {}
    if judged:
        from tapir_exp.eval.runner import evaluate_round

        metrics.update(evaluate_round(cfg, model_dir, oracle(), generator, out_dir, rnd, model_name,
                                      model_outputs=model_outputs, mt_bench_answers=mt_bench_answers))
    if skills:
        from tapir_exp.skills.evaluate import evaluate_skills

        metrics.update(evaluate_skills(cfg, model_dir, generator, out_dir, rnd))
    return metrics
