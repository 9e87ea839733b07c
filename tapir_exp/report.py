"""``tapir-report DIR [DIR ...] [--out report/]``: compare runs (or whole sweep directories).

Finds every ``summary.json`` under the given directories and writes a comparison table of the last round
(Markdown and CSV) plus PNG plots per round: eval metrics, mean MFD and hard fraction, train loss, task mix.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from tapir_exp.errors import DataError, TapirError
from tapir_exp.summary import RunSummary

COLUMNS = ["alpaca_eval/win_rate", "alpaca_eval/lc_win_rate", "alpaca_eval/standard_error", "mt_bench/score",
           "round/mean_mfd", "round/hard_fraction", "round/round_size", "train/final_loss", "oracle/requests",
           "oracle/cost_usd"]


def find_runs(paths: list[str]) -> list[Path]:
    runs = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(p, None, None, "no such run or sweep directory")
        runs += [s.parent for s in sorted(p.rglob("summary.json"))] if p.is_dir() else []
    if not runs:
        raise TapirError(f"no summary.json under {', '.join(paths)} (has the run finished a round?)")
    return runs


def load(run: Path) -> dict[str, Any]:
    try:
        doc = json.loads((run / "summary.json").read_text())
    except json.JSONDecodeError as e:
        raise DataError(run / "summary.json", e.lineno, None, f"malformed JSON: {e.msg}") from e
    rounds = doc.get("rounds") or []
    per_round = [RunSummary.flatten(r) for r in rounds]
    label = f"{doc.get('name', run.parent.name)}/{doc.get('run_name', run.name)}"
    return {"run": str(run), "label": label, "rounds": rounds, "per_round": per_round}


def write_tables(runs: list[dict[str, Any]], out: Path) -> None:
    cols = [c for c in COLUMNS if any(c in (r["per_round"][-1] if r["per_round"] else {}) for r in runs)]
    rows = [[r["label"], len(r["rounds"]) - 1] + [(r["per_round"][-1] if r["per_round"] else {}).get(c) for c in cols]
            for r in runs]
    with open(out / "report.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "rounds", *cols])
        w.writerows(rows)
    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| run | rounds | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    (out / "report.md").write_text("# tapir-report\n\nLast round of each run.\n\n" + "\n".join(lines) + "\n")


def plot(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for key, title in [("alpaca_eval/lc_win_rate", "LC win rate"), ("alpaca_eval/win_rate", "win rate"),
                       ("mt_bench/score", "MT-Bench score"), ("round/mean_mfd", "mean MFD"),
                       ("round/hard_fraction", "hard fraction"), ("train/final_loss", "final train loss")]:
        series = [(r["label"], [(i, pr.get(key)) for i, pr in enumerate(r["per_round"]) if pr.get(key) is not None])
                  for r in runs]
        if not any(pts for _, pts in series):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, pts in series:
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.legend(fontsize=7)
        path = out / f"{key.replace('/', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    return made


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tapir-report", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="run directories or sweep directories (searched recursively)")
    ap.add_argument("--out", default="report", help="output directory (default: ./report)")
    a = ap.parse_args(argv)
    runs = [load(r) for r in find_runs(a.dirs)]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(runs, out)
    pngs = plot(runs, out)
    print((out / "report.md").read_text())
    print(f"tapir-report: {len(runs)} run(s); wrote {out}/report.md, report.csv and {len(pngs)} plot(s)")
