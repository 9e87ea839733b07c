"""Time the README's first command: a fresh ``tapir`` (no arguments) in a temporary root with nothing cached
(no converted model, no oracle cache), then the same command again (the finished run re-run).

    .venv/bin/python bench/first_run.py                 # 3 runs of this checkout
    .venv/bin/python bench/first_run.py --runs 1 --against /tmp/old-checkout   # interleaved A/B, ratio
    .venv/bin/python bench/first_run.py --runs 1 --keep  # keep the run's root (printed) to look into

Prints each run's wall time, the median, each step's share (from the run's ``summary.json``: the seconds
the run store recorded per step, summed over rounds; "outside steps" is start-up, model conversion and
loading, W&B, exports and tables), the re-run's wall time, and the machine's load average (the sandbox
is shared; a loaded machine inflates every number, ratios within one invocation much less).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(src: Path, extra: list[str], keep: bool = False) -> dict:
    root = Path(tempfile.mkdtemp(prefix="tapir-first-run-"))
    env = {k: v for k, v in os.environ.items() if k not in ("TAPIR_CACHE", "TAPIR_ROOT", "WANDB_API_KEY")}
    env.update(TAPIR_ROOT=str(root), WANDB_MODE="offline", HF_HUB_OFFLINE="1", PYTHONPATH=str(src))
    cmd = [sys.executable, "-m", "tapir_exp.cli", *extra]
    try:
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        first = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if first.returncode != 0:
            raise SystemExit(f"first run failed ({src}):\n{first.stderr[-3000:]}")
        # read before the re-run, which records its own (near-zero) wall time per round
        summary = json.loads(next((root / "outputs").glob("*/*/summary.json")).read_text())
        t0 = time.perf_counter()
        again = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        rerun = time.perf_counter() - t0
        if again.returncode != 0:
            raise SystemExit(f"re-run failed ({src}):\n{again.stderr[-3000:]}")
        steps: dict[str, float] = defaultdict(float)
        for r in summary["rounds"]:
            for step, s in (r.get("seconds") or {}).items():
                steps[step] += float(s)
        rounds = [float(r.get("wall_seconds") or 0) for r in summary["rounds"]]
        return {"wall": wall, "rerun": rerun, "steps": dict(steps), "rounds": rounds,
                "load": (load0 + os.getloadavg()[0]) / 2}
    finally:
        if keep:  # its run directory, logs and caches, to look at what was timed
            print(f"kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


def report(name: str, runs: list[dict]) -> float:
    walls = [r["wall"] for r in runs]
    med = statistics.median(walls)
    print(f"\n== {name}: {len(runs)} fresh run(s), wall {', '.join(f'{w:.1f}' for w in walls)} s; median {med:.1f} s"
          f" (goal 300 s: x{med / 300:.2f}); re-run {statistics.median(r['rerun'] for r in runs):.1f} s;"
          f" load average during the runs {statistics.mean(r['load'] for r in runs):.1f} on {os.cpu_count()} cores")
    steps: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        for k, v in r["steps"].items():
            steps[k].append(v)
        steps["(outside steps)"].append(r["wall"] - sum(r["steps"].values()))
    print(f"{'step':<18}{'median s':>10}{'share':>8}")
    for k, vals in sorted(steps.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"{k:<18}{statistics.median(vals):>10.1f}{statistics.median(vals) / med:>8.1%}")
    rounds = list(zip(*(r["rounds"] for r in runs), strict=True))
    print("per round (median wall s): " + ", ".join(f"r{i} {statistics.median(x):.1f}" for i, x in enumerate(rounds)))
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", type=Path, help="another checkout's root, run interleaved with this one (A/B)")
    ap.add_argument("--keep", action="store_true", help="keep each run's temporary root (printed) instead of deleting it")
    ap.add_argument("overrides", nargs="*", help="tapir overrides (default: none, the README's first command)")
    args = ap.parse_args()
    sources = {"this checkout": REPO, **({"against": args.against.resolve()} if args.against else {})}
    results: dict[str, list[dict]] = {k: [] for k in sources}
    for i in range(args.runs):
        for name, src in sources.items():
            print(f"run {i + 1}/{args.runs} ({name}) ...", flush=True)
            results[name].append(run_once(src, args.overrides, keep=args.keep))
    medians = {name: report(name, runs) for name, runs in results.items()}
    if args.against:
        print(f"\nthis checkout / against: x{medians['this checkout'] / medians['against']:.2f} (median wall)")


if __name__ == "__main__":
    main()
