"""How an eval result says which protocol produced it: one line per suite, from the ``<suite>/protocol/*`` keys
an evaluation records (shown by ``tapir-report`` and the per-round table)."""

from __future__ import annotations

from typing import Any


def describe(ev: dict[str, Any]) -> dict[str, str]:
    """``{"alpaca_eval": "...", "mt_bench": "..."}`` for the suites that have protocol keys in ``ev``."""
    out = {}
    a = {k.split("/", 2)[2]: v for k, v in ev.items() if k.startswith("alpaca_eval/protocol/")}
    if a:
        line = f"{a.get('annotator')} ({a.get('annotator_hash')}), judge {a.get('judge_model')}, LC {a.get('lc_formula')}"
        if "alpaca_eval/lc_win_rate" in ev and ev.get("alpaca_eval/lc_standard_error") is None:
            line += ", LC standard error: n/a"
        out["alpaca_eval"] = f"{line} - {a.get('leaderboard')}"
    m = {k.split("/", 2)[2]: v for k, v in ev.items() if k.startswith("mt_bench/protocol/")}
    if m:
        refs = f", references ({m['references_hash']})" if m.get("references_hash") else ""
        out["mt_bench"] = (f"{m.get('judge_prompts')} ({m.get('judge_prompts_hash')}){refs}, judge {m.get('judge_model')}"
                           f" - {m.get('leaderboard')}")
    return out
