"""``tapir-winrate``: win rate and LC win rate of an alpaca_eval annotations file.

Reads alpaca_eval's ``annotations.json`` (a list of records with ``preference``, ``output_1`` = the baseline's
output and ``output_2`` = the evaluated model's, in the order of the evaluation set) — e.g. a leaderboard
model's published annotations — and reports what alpaca_eval's leaderboard reports, computed by this
project's metrics. A preference of 0 is a draw (1.5) and a missing one is left out, as alpaca_eval does.
With ``--gamed`` (a local copy of alpaca_eval's ``df_gamed.csv``) the LC formula is ``length_controlled_v1``,
the leaderboard's; without it, ``minimal``, whose LC standard error is not available (null: every item has
the same predicted value).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from tapir_exp.errors import DataError
from tapir_exp.eval.metrics import GamedAnnotations, length_controlled_win_rate, win_rate
from tapir_exp.records import iter_json_array


def read_annotations(path: str | Path) -> tuple[list[float | None], list[int], list[int]]:
    """(preferences, model output lengths, baseline output lengths) from an alpaca_eval annotations file."""
    prefs: list[float | None] = []
    model_len, base_len = [], []
    try:
        records = list(iter_json_array(Path(path)))
    except FileNotFoundError as e:
        raise DataError(path, None, None, "file not found") from e
    for where, rec in records:
        for field in ("output_1", "output_2"):
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise DataError(path, where, field, "expected a string (1 = baseline, 2 = evaluated model)")
        p = rec.get("preference")
        number = isinstance(p, int | float) and not isinstance(p, bool)
        if not (p is None or number and (math.isnan(p) or p == 0 or 1 <= p <= 2)):
            raise DataError(path, where, "preference", f"expected a number in [1, 2] (0 = draw) or null, got {p!r}")
        prefs.append(None if p is None or math.isnan(p) else 1.5 if p == 0 else float(p))
        base_len.append(len(rec["output_1"]))
        model_len.append(len(rec["output_2"]))
    return prefs, model_len, base_len


def score(path: str | Path, gamed: str | Path | None = None, cv_folds: int = 5) -> dict[str, Any]:
    prefs, model_len, base_len = read_annotations(path)
    wr, se = win_rate(prefs)
    lc = length_controlled_win_rate(prefs, model_len, base_len, cv_folds=cv_folds,
                                    gamed=GamedAnnotations.load(gamed) if gamed else None)
    return {"win_rate": wr, "standard_error": se, "length_controlled_winrate": lc and lc.win_rate,
            "lc_standard_error": lc and lc.standard_error, "glm": lc and lc.glm,
            "lc_formula": lc and lc.formula,
            "n_judged": sum(p is not None for p in prefs), "n_total": len(prefs),
            "avg_length": sum(model_len) / max(1, len(model_len))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tapir-winrate", description=__doc__.splitlines()[0])
    ap.add_argument("annotations", help="alpaca_eval annotations.json (output_1 = baseline, output_2 = model)")
    ap.add_argument("--gamed", help="local copy of alpaca_eval's df_gamed.csv: LC by length_controlled_v1")
    ap.add_argument("--cv-folds", type=int, default=5, help="folds for choosing the GLM's regularisation")
    a = ap.parse_args(argv)
    print(json.dumps(score(a.annotations, a.gamed, a.cv_folds), indent=2))
