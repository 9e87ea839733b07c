"""The task wrapper: one job = one run directory, one config snapshot, one logger that is always closed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from tapir_exp.config import redact_hydra_outputs, redacted_container, save_config

log = logging.getLogger("tapir")


def setup_run_dir(cfg: DictConfig) -> Path:
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # `mode` does not name a run, so a plan or a standalone eval of a run lands in the run's directory: its
    # snapshot goes beside the run's (config.plan.yaml), never over the config the run's outputs came from
    save_config(cfg, run_dir / ("config.yaml" if cfg.mode == "run" else f"config.{cfg.mode}.yaml"))
    redact_hydra_outputs(run_dir)
    return run_dir


def build_tracker(cfg: DictConfig, run_dir: Path) -> Any:
    """The logger of ``conf/logger`` (W&B, CSV or none), given the redacted config and run identity; started
    on its first new entry (:class:`~tapir_exp.tracking.LazyTracker`), so a finished run run again starts none."""
    from tapir_exp.steps.curriculum import rounds_to_run
    from tapir_exp.tracking import LazyTracker, NullTracker

    if cfg.get("logger") is None or cfg.logger.get("_target_") is None:
        return NullTracker()
    tracker = LazyTracker(lambda: instantiate(cfg.logger, run_dir=str(run_dir), run_config=redacted_container(cfg),
                                              _recursive_=False, _convert_="all"), run_dir)
    return tracker.start_unless_logged(list(range(rounds_to_run(cfg.curriculum) + 1)) if cfg.mode == "run" else None)


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Dispatch on ``cfg.mode``; the tracker is finished whatever happens (exception included), so jobs of
    a multirun never share a W&B run."""
    run_dir = setup_run_dir(cfg)
    if cfg.mode == "plan":
        from tapir_exp.plan import estimate

        return estimate(cfg)
    from tapir_exp.distributed import check_world, clear_leader_failed, launch_rank, mark_leader_failed
    from tapir_exp.tracking import NullTracker

    check_world(cfg.trainer)  # a job launched with the wrong number of tasks stops here, not at round 0's training

    leader = launch_rank()[0] == 0
    if leader:
        clear_leader_failed(run_dir)
    # one W&B run per pipeline run: the follower ranks of a multi-GPU job log nothing
    tracker = build_tracker(cfg, run_dir) if leader else NullTracker()
    exit_code = 1
    try:
        if cfg.mode == "eval":
            from tapir_exp.eval.standalone import evaluate_model

            result = evaluate_model(cfg, run_dir, tracker)
        else:
            from tapir_exp.pipeline import run_pipeline

            result = run_pipeline(cfg, run_dir, tracker)
        exit_code = 0
        return result
    except BaseException as e:
        if leader and cfg.mode != "eval":
            mark_leader_failed(run_dir, e)
        raise
    finally:
        tracker.finish(exit_code=exit_code)
