"""What ``share_generations`` saves in a grid: the student's repeated generation calls, from the runs' manifests.

    .venv/bin/python bench/shared_generations.py BASELINE_GRID/outputs/skills SHARED_GRID/outputs/skills

Each argument is a grid's output directory (one run directory per setting and seed). A step that makes a
student generation call (``eval``, ``student_answers``, ``expand_mfd``) has the same signature in two runs
exactly when the call is the same (same student content, prompts and generation config). Per step and round,
the script sums the seconds of the first run of each signature (the call computed) and of the others (the
repeats: computed again without sharing, read from ``<paths.cache_dir>/generations`` with it) and prints the
repeats' seconds of the second grid against the first's.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

STEPS = ("eval", "student_answers", "expand_mfd")


def repeats(grid: Path) -> dict[tuple[int, str], tuple[int, int, float, float]]:
    """(round, step) -> (calls, repeated calls, seconds of the first of each signature, seconds of the repeats)."""
    groups: dict[tuple[int, str, str], list[float]] = defaultdict(list)
    for manifest in sorted(grid.glob("*/manifest.json")):
        for e in json.loads(manifest.read_text())["steps"]:
            if e["step"] in STEPS:
                groups[(e["round"], e["step"], e["signature"])].append(float(e["seconds"]))
    out: dict[tuple[int, str], list] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    for (rnd, step, _), seconds in groups.items():
        seconds.sort(reverse=True)  # the call computed is the slowest of its group
        row = out[(rnd, step)]
        row[0] += len(seconds)
        row[1] += len(seconds) - 1
        row[2] += seconds[0]
        row[3] += sum(seconds[1:])
    return {k: tuple(v) for k, v in sorted(out.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline", type=Path, help="a grid run without share_generations")
    ap.add_argument("shared", type=Path, help="the same grid with share_generations")
    a = ap.parse_args()
    base, shared = repeats(a.baseline), repeats(a.shared)
    print(f"{'round/step':24s} {'calls':>5s} {'repeats':>7s} {'first s (A/B)':>16s} {'repeats s (A/B)':>18s}")
    totals = [0.0, 0.0, 0.0, 0.0]
    for key in sorted(set(base) | set(shared)):
        b, s = base.get(key, (0, 0, 0.0, 0.0)), shared.get(key, (0, 0, 0.0, 0.0))
        print(f"{key[0]}/{key[1]:22s} {s[0]:5d} {s[1]:7d} {b[2]:7.1f} / {s[2]:6.1f} {b[3]:8.1f} / {s[3]:7.1f}")
        totals = [totals[0] + b[2], totals[1] + s[2], totals[2] + b[3], totals[3] + s[3]]
    print(f"{'all':24s} {'':5s} {'':7s} {totals[0]:7.1f} / {totals[1]:6.1f} {totals[2]:8.1f} / {totals[3]:7.1f}")
    if totals[2]:
        print(f"repeated calls: {totals[3]:.1f} s with sharing against {totals[2]:.1f} s without "
              f"(x{totals[3] / totals[2]:.3f}); saved {totals[2] - totals[3]:.0f} s")


if __name__ == "__main__":
    main()
