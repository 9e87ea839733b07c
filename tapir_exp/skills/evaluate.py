"""Exact-match evaluation of a student on the skills world's held-out sets (per task and difficulty)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tapir_exp.records import write_jsonl
from tapir_exp.skills import world
from tapir_exp.stats import wilson


def evaluate_skills(cfg: DictConfig, model_dir: str | Path, generator: Any, out_dir: str | Path,
                    rnd: int) -> dict[str, float]:
    sk = cfg.eval.skills
    items = world.eval_set(int(sk.get("seed", cfg.seed)), per_cell=int(sk.get("per_cell", 10)),
                           tasks=list(sk.tasks) if sk.get("tasks") else None)
    gens = generator.generate(model_dir, [[{"role": "user", "content": it.instruction}] for it in items])
    rows, cells = [], {}
    for it, g in zip(items, gens, strict=True):
        ok = world.final_answer(g.text) == it.answer
        rows.append({"task": it.task, "difficulty": it.difficulty, "instruction": it.instruction,
                     "answer": it.answer, "output": g.text, "correct": ok})
        for key in (it.task, f"{it.task}/d{it.difficulty}", "all"):
            k, n = cells.get(key, (0, 0))
            cells[key] = (k + ok, n + 1)
    # atomic: a run killed mid-write must not leave a torn file that the paired comparison would read
    write_jsonl(Path(out_dir) / "skills_outputs.jsonl", rows)
    metrics: dict[str, float] = {}
    for key, (k, n) in sorted(cells.items()):
        name = "skills/accuracy" if key == "all" else f"skills/acc/{key}"
        lo, hi = wilson(k, n)
        metrics[name] = k / n
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = lo, hi
        if "/" not in key or key == "all":
            metrics[f"skills/n/{key}"] = n
    return metrics
