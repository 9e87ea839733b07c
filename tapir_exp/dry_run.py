"""A dry run of the pipeline for ``tapir mode=plan``: the real round loop (:class:`~tapir_exp.pipeline.Pipeline`,
every step, the store, the curriculum) with a planning oracle that records each request instead of sending it
(:mod:`tapir_exp.llm.planning`), a placeholder student that does not train and a placeholder generator that
does not load a model. Everything it writes goes to a temporary directory, never to a run's store or cache.

The student's answers are where the plan needs an assumption: ``plan.hard_fraction`` of the items the student
answers (a seeded choice; one number, or one per round with the last repeated) come back marked as missed,
and the planning judge scores those low, so MFD selects them as hard the way it selects real ones.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tapir_exp.config import to_container
from tapir_exp.llm.planning import MISSED, PlannedRequest, PlanningOracle, filler
from tapir_exp.pipeline import Pipeline
from tapir_exp.student.generate import Generation
from tapir_exp.tracking import NullTracker

DEFAULT_HARD_FRACTION = 0.5  # conf/mode/plan.yaml's; for a config composed without mode=plan


def hard_fraction(cfg: DictConfig) -> float | list[float]:
    """``plan.hard_fraction``: one number, or one per round."""
    plan = cfg.get("plan")
    value = to_container(plan.hard_fraction) if plan is not None else DEFAULT_HARD_FRACTION
    return value if isinstance(value, list) else float(value)


class PlaceholderGenerator:
    """The student's answers without a model: ``max_new_tokens`` of placeholder text each, a seeded
    ``hard_fraction`` of them marked as missed."""

    def __init__(self, max_new_tokens: int, hard_fraction: float | list[float], seed: int):
        self.max_new_tokens, self.seed, self.round = int(max_new_tokens), seed, 0
        self.fractions = [float(x) for x in hard_fraction] if isinstance(hard_fraction, list) else [float(hard_fraction)]

    def fraction(self) -> float:
        return self.fractions[min(max(self.round, 1), len(self.fractions)) - 1]

    def generate(self, model_dir: Any, conversations: list[list[dict[str, str]]]) -> list[Generation]:
        n = len(conversations)
        rng = random.Random(f"{self.seed}/plan/{self.round}/{n}")
        missed = set(rng.sample(range(n), round(self.fraction() * n)))
        # the student's directory in the text: two rounds' answers (and their eval verdicts) are not one request
        text = filler(self.max_new_tokens, hashlib.sha256(str(model_dir).encode()).hexdigest()[:8])
        return [Generation(f"{MISSED} {text}" if i in missed else text, self.max_new_tokens, "stop")
                for i in range(n)]


class PlanPipeline(Pipeline):
    """The pipeline with the planning oracle, the placeholder generator and a student that is never built
    or trained (its directories hold a marker file, so the steps after it run as they would)."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        super().__init__(cfg, run_dir, NullTracker(), rank=0)  # one process plans, whatever job it runs in
        # its placeholder student and answers must never reach the shared caches of real ones
        self.share_warmup = self.share_generations = False
        self.placeholder = PlaceholderGenerator(int(cfg.generation.get("max_new_tokens") or 256),
                                                hard_fraction(cfg), self.seed)

    def _build_oracle(self) -> PlanningOracle:
        ratios = to_container(self.cfg.tasks.ratios) if self.cfg.tasks.get("ratios") is not None else None
        return PlanningOracle(self.cfg.oracle, self.labels, ratios)

    def _build_generator(self) -> PlaceholderGenerator:
        return self.placeholder

    def _init_student(self, out_dir: Path, corpus: list[str]) -> dict[str, Any]:
        (out_dir / "PLANNED").write_text("a placeholder student (tapir mode=plan)\n")  # the store's step directory
        return {"corpus": len(corpus)}

    def _fit(self, r: int, init_dir: Path, data: Any, out_dir: Path, epochs: int | None,
             work_dir: Path) -> dict[str, Any]:
        (out_dir / "PLANNED").write_text(f"a placeholder student, round {r} (tapir mode=plan)\n")
        return {"examples": len(data.records)}

    def seed_pool(self) -> list[Any]:
        pool = super().seed_pool()
        self.pool_size = len(pool)
        return pool

    def run_round(self, r: int, pool: list[Any], student_dir: Path) -> tuple[Path, list[Any]]:
        self.placeholder.round = r
        return super().run_round(r, pool, student_dir)

    def finish_round(self, r: int, t0: float) -> None:
        return None  # no round table, no export: nothing was trained


def planned_requests(cfg: DictConfig) -> tuple[list[PlannedRequest], dict[str, Any]]:
    """Every oracle request a run of ``cfg`` would send, from a dry run of its pipeline; and what the dry run
    found (pool size, rounds, round summaries)."""
    if "hydra" in cfg:  # a config composed with Hydra's node (tests, benchmarks): a job's config has none
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    with tempfile.TemporaryDirectory(prefix="tapir-plan-") as tmp:
        p = PlanPipeline(cfg, Path(tmp))
        try:
            p.run()
            oracle = p._oracle
            requests = list(oracle.requests) if oracle is not None else []
            return requests, {"pool": p.pool_size, "rounds": p.summary.doc["rounds"]}
        finally:
            p.close()
