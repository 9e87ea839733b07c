"""``tapir mode=eval eval.model=<dir>``: evaluate any HF checkpoint (or a run's final student) without
training, with the same judges, metrics and exports as the per-round evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from tapir_exp.errors import ConfigError
from tapir_exp.eval.runner import evaluate_round
from tapir_exp.llm import build_oracle


def evaluate_model(cfg: DictConfig, run_dir: Path, tracker: Any) -> dict[str, Any]:
    model = cfg.eval.get("model") or (run_dir / "final_student")
    model_dir = Path(model)
    if not (model_dir / "config.json").is_file():
        raise ConfigError("eval.model", f"{model_dir} is not an HF model directory (no config.json); "
                                        "give eval.model=<path> or run the pipeline first")
    oracle = build_oracle(cfg.oracle, run_dir)
    try:
        metrics = evaluate_round(cfg, model_dir, oracle, instantiate(cfg.generation), run_dir / "eval", 0,
                                 f"{cfg.name}/{model_dir.name}")
    finally:
        oracle.close()
    tracker.log_metrics(metrics, step=0)
    for k, v in metrics.items():
        print(f"{k}: {v}")
    return {"metrics": metrics, "objective": metrics.get(cfg.get("objective", "alpaca_eval/lc_win_rate"))}
