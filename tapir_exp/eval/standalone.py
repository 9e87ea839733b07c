"""``tapir mode=eval`` / ``tapir-eval``: evaluate any model without training, with the same judges, protocols,
metrics and exports as the per-round evaluation — an HF checkpoint (``eval.model``, default the run's final
student), or answers a user already has: alpaca_eval's ``model_outputs.json`` (``eval.model_outputs``) and
FastChat's answer JSONL (``eval.mt_bench_answers``). Which suites run, and how, is the pipeline's own dispatch
(:mod:`tapir_exp.eval.suites`), skills suite included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from tapir_exp.errors import ConfigError
from tapir_exp.eval.suites import evaluate_suites, needs_generation
from tapir_exp.llm import build_oracle


def evaluate_model(cfg: DictConfig, run_dir: Path, tracker: Any) -> dict[str, Any]:
    ev = cfg.eval
    outputs, answers = ev.get("model_outputs"), ev.get("mt_bench_answers")
    # a checkpoint is needed for every enabled suite that has no answers file (the skills suite has none)
    model_dir = None
    if needs_generation(cfg, outputs, answers) or ev.get("model"):
        model_dir = Path(ev.get("model") or (run_dir / "final_student"))
        if not (model_dir / "config.json").is_file():
            raise ConfigError("eval.model", f"{model_dir} is not an HF model directory (no config.json); give "
                              "eval.model=<path>, eval.model_outputs / eval.mt_bench_answers, or run the pipeline first")
    name = f"{cfg.name}/{model_dir.name}" if model_dir else str(cfg.name)
    built: list[Any] = []

    def oracle() -> Any:  # built only when a judged suite runs
        if not built:
            built.append(build_oracle(cfg.oracle, run_dir))
        return built[0]

    try:
        metrics = evaluate_suites(cfg, model_dir, oracle, instantiate(cfg.generation) if model_dir else None,
                                  run_dir / "eval", 0, name, model_outputs=outputs, mt_bench_answers=answers)
    finally:
        for o in built:
            o.close()
    tracker.log_metrics(metrics, step=0)
    for k, v in metrics.items():
        print(f"{k}: {v}")
    return {"metrics": metrics, "objective": metrics.get(cfg.get("objective", "alpaca_eval/lc_win_rate"))}
