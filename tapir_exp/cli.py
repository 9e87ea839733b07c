"""Console entry points. Nothing but wiring: compose the config, set up the run, hand over.

``tapir``         the pipeline (``mode=run``), its cost plan (``mode=plan``) or a standalone eval
``tapir-eval``    evaluate a checkpoint or served model (same config tree, ``mode=eval``)
``tapir-report``  compare run/sweep directories (tables + plots), offline
``tapir-winrate`` win rate and LC win rate of an alpaca_eval annotations file
``tapir-verify``  re-hash every artifact of a run directory; report any changed behind the store's back
``tapir-export``  a run's SFT sets and preference pairs for LLaMA-Factory / TRL
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tapir_exp.config import adopt_hydra_output_dir, packaged_dir
from tapir_exp.config_schema import check_config
from tapir_exp.errors import TapirError

# The config tree: conf/ at the repository root, shipped inside the package (tapir_exp/conf) - see
# pyproject.toml. Your own experiment files from any folder: `tapir --config-dir DIR experiment=NAME`.
CONFIG_PATH = str(packaged_dir("conf"))


def _fail(err: BaseException) -> None:
    print(f"tapir: error: {err}", file=sys.stderr)
    sys.exit(2)


class ConfigCheck(Callback):
    """Checks the composed config before Hydra creates the run directory (conf/hydra/default.yaml), so a
    refused value leaves no directory behind. ``run_task`` checks again: it also runs for multirun jobs."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # ${hydra:...} (the run name) resolves as in the job
        try:
            check_config(config)
        except TapirError as err:
            _fail(err)


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


def cpu_thread_defaults() -> None:
    """OpenMP threads that wait for work sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless the
    environment says otherwise. torch's CPU kernels (the local oracle, CPU training) use one OpenMP thread per
    core; spinning threads take the core from a thread of the same team whenever anything else runs, and
    every parallel region then waits for the preempted one. In a tapir run something else always runs: the
    oracle's event loop, the progress bar, W&B's threads and service. Measured (bench/README.md, "The first
    run"): on a shared 2-core machine SmolLM2-135M prefill 5x and decode 8x faster than spinning; on an idle
    one, in a full first run, the MFD judge 52.5 s against 75.3 s spinning (the teacher's decoding 76 s
    against 57 s: the judges' prefill dominates). A bare torch process on idle cores is the exception (its
    decoding ~2x faster spinning): ``OMP_WAIT_POLICY=ACTIVE``. Read by OpenMP when torch is first imported,
    which is after this. Same results: the number of threads and the order of the sums do not change."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_task(cfg: DictConfig) -> dict | None:
    """Run one job of whatever mode the config selects; user errors become one line and exit 2.
    Nothing is loaded, sent or written before the config passed its check."""
    from tapir_exp import console
    from tapir_exp.task import run

    quiet_http_logs(HydraConfig.get().verbose if HydraConfig.initialized() else None)
    console.install()
    cpu_thread_defaults()
    try:
        adopt_hydra_output_dir(cfg)
        check_config(cfg)
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


def verify_main(argv: list[str] | None = None) -> None:
    """``tapir-verify <run dir> [--forget]``: the full check that resumes skip (they compare file stats only).
    Exit 0 when every artifact matches its commit, 1 when one changed, 2 on a usage error."""
    import argparse
    from pathlib import Path

    from tapir_exp.store import verify_run

    ap = argparse.ArgumentParser(prog="tapir-verify", description=verify_main.__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--forget", action="store_true",
                    help="drop changed artifacts from the manifest, so the next run recomputes those steps")
    args = ap.parse_args(argv)
    try:
        report = verify_run(args.run_dir, forget=args.forget)
    except TapirError as err:
        _fail(err)
    for line in report.problems:
        print(f"tapir-verify: {line}")
    state = "all match their commit" if report.ok else f"{len(report.changed_steps)} step(s) changed"
    print(f"tapir-verify: {args.run_dir}: {report.artifacts} artifacts, {report.files} files, "
          f"{report.bytes_read / 1e9:.2f} GB re-hashed: {state}"
          + (" (forgotten: the next run recomputes them)" if args.forget and not report.ok else ""))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
