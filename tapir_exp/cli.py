"""Console entry points. Nothing but wiring: compose the config, set up the run, hand over.

``tapir``         the pipeline (``mode=run``), its cost plan (``mode=plan``) or a standalone eval
``tapir-eval``    evaluate a checkpoint or served model (same config tree, ``mode=eval``)
``tapir-report``  compare run/sweep directories (tables + plots), offline
``tapir-winrate`` win rate and LC win rate of an alpaca_eval annotations file
``tapir-export``  a run's SFT sets and preference pairs for LLaMA-Factory / TRL
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import tapir_exp.config  # noqa: F401  (registers resolvers before Hydra composes)
from tapir_exp.errors import TapirError

# The config tree lives at the repository root (conf/); tapir-exp is installed editable (pip install -e .).
CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")


def _fail(err: BaseException) -> None:
    print(f"tapir: error: {err}", file=sys.stderr)
    sys.exit(2)


# HTTP client libraries that log one INFO line per request ("HTTP Request: POST .../chat/completions"):
# hundreds of thousands of lines in a SLURM log at 52K items. The oracle's progress bar / per-call summary
# lines say what happened instead.
CHATTY_LOGGERS = ("httpx", "httpx2", "httpcore", "openai", "aiohttp.access")


def quiet_http_logs(verbose: bool | str | list | None) -> None:
    """Keep the HTTP libraries at WARNING unless ``hydra.verbose`` asks for them (true, or their names)."""
    named = {verbose} if isinstance(verbose, str) else set(verbose or []) if not isinstance(verbose, bool) else set()
    for name in CHATTY_LOGGERS:
        if verbose is True or name in named:
            continue
        logging.getLogger(name).setLevel(logging.WARNING)


def run_task(cfg: DictConfig) -> dict | None:
    """Run one job of whatever mode the config selects; user errors become one line and exit 2."""
    from hydra.core.hydra_config import HydraConfig

    from tapir_exp.task import run

    quiet_http_logs(HydraConfig.get().verbose if HydraConfig.initialized() else None)
    try:
        return run(cfg)
    except TapirError as err:
        _fail(err)
    return None


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="tapir")
def main(cfg: DictConfig) -> float | None:
    result = run_task(cfg)
    # Returned value is what Hydra sweepers (e.g. Optuna) optimise.
    if isinstance(result, dict) and result.get("objective") is not None:
        return float(result["objective"])
    return None


def eval_main() -> None:
    """``tapir-eval`` = ``tapir mode=eval`` with the same overrides."""
    sys.argv.insert(1, "mode=eval")
    main()


def report_main(argv: list[str] | None = None) -> None:
    from tapir_exp.report import main as report

    try:
        report(argv)
    except TapirError as err:
        _fail(err)


def export_main(argv: list[str] | None = None) -> None:
    from tapir_exp.export import main as export

    try:
        export(argv)
    except TapirError as err:
        _fail(err)


def winrate_main(argv: list[str] | None = None) -> None:
    from tapir_exp.eval.rescore import main as winrate

    try:
        winrate(argv)
    except TapirError as err:
        _fail(err)


if __name__ == "__main__":
    main()
