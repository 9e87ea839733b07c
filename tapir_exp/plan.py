"""``tapir mode=plan``: what a configuration will ask of the oracle - requests per role, step and round,
estimated tokens and cost - from a dry run of the pipeline itself (:mod:`tapir_exp.dry_run`: the real round
loop with a planning oracle that records each request instead of sending it). This module prices the
recorded requests and writes the table (``plan.json``, ``plan.csv``, printed).

Token counts are estimates: 4 characters per token for prompts; completions at the role's ``max_tokens`` (an
upper bound). What a real oracle would decide (labels, which items are hard) is assumed; see
:mod:`tapir_exp.llm.planning` and ``plan.hard_fraction``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tapir_exp.config import to_container
from tapir_exp.dry_run import hard_fraction, planned_requests
from tapir_exp.files import atomic_write_json, atomic_write_text
from tapir_exp.llm.planning import CHARS_PER_TOKEN, PlannedRequest
from tapir_exp.steps.curriculum import rounds_to_run

COUNTS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")


def table_rows(requests: list[PlannedRequest]) -> list[dict[str, Any]]:
    """One row per (role, step, round), in the order the run would first ask them: requests sent (and paid),
    repeats the cache answers (``cache_hits``), tokens of the requests sent."""
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for q in requests:
        row = rows.setdefault((q.role, q.step, q.round), {"role": q.role, "step": q.step, "round": q.round,
                                                           "requests": 0, "cache_hits": 0, "prompt_tokens": 0,
                                                           "completion_tokens": 0})
        if q.cached:
            row["cache_hits"] += 1
            continue
        row["requests"] += 1
        row["prompt_tokens"] += q.prompt_tokens
        row["completion_tokens"] += q.max_tokens
    return list(rows.values())


def estimate(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir or cfg.paths.run_dir)
    requests, found = planned_requests(cfg)
    rows = table_rows(requests)
    prices = to_container(cfg.oracle.get("prices")) or {}
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        model = _role_model(cfg, row["role"])
        price = prices.get(model) or {}
        row["model"] = model
        row["cost_usd"] = round(row["prompt_tokens"] / 1e6 * float(price.get("prompt", 0.0))
                                + row["completion_tokens"] / 1e6 * float(price.get("completion", 0.0)), 4)
        row["priced"] = bool(price)
        t = totals.setdefault(row["role"], dict.fromkeys(COUNTS, 0))
        for k in COUNTS:
            t[k] += row[k]
    grand = {k: sum(t[k] for t in totals.values()) for k in COUNTS}
    m = cfg.steps.mfd
    doc = {"pool": found["pool"], "rounds": rounds_to_run(cfg.curriculum), "rows": rows, "by_role": totals,
           "total": grand, "unpriced_models": sorted({r["model"] for r in rows if not r["priced"]}),
           "assumptions": {"chars_per_token": CHARS_PER_TOKEN, "hard_fraction": hard_fraction(cfg),
                           "judge_format": str(m.format), "judge_orders": 2 if m.both_orders else 1,
                           "judge_scoring": m.scoring, "task_labels": "tasks.ratios (or uniform) where the oracle labels",
                           "hard_by_round": {str(x["round"]): x.get("hard_count") for x in found["rounds"]
                                             if x.get("hard_count") is not None},
                           "completion_tokens": "the request's max_tokens (an upper bound)"}}
    atomic_write_json(run_dir / "plan.json", doc)
    _write_csv(run_dir / "plan.csv", rows)
    _print(doc)
    return doc


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The plan's rows for a spreadsheet, beside plan.json."""
    import csv
    import io

    cols = ["role", "step", "round", "model", "requests", "prompt_tokens", "completion_tokens", "cost_usd", "priced"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _role_model(cfg: DictConfig, role: str) -> str:
    backend = cfg.oracle.roles[role].backend
    node = cfg.oracle.backends.get(backend)
    model = node.get("model") if node is not None else None  # in-process backends (oracle=skills) name none
    return str(model) if model else backend


def _print(doc: dict[str, Any]) -> None:
    from rich.table import Table

    from tapir_exp.summary import console

    t = Table(title=f"oracle plan: pool {doc['pool']}, {doc['rounds']} round(s) (no model was called)")
    for col in ("role", "step", "round", "model", "requests", "prompt tok", "completion tok", "cost $"):
        t.add_column(col, justify="right" if col not in ("role", "step", "model") else "left")
    for r in doc["rows"]:
        t.add_row(r["role"], r["step"], str(r["round"]), r["model"], f"{r['requests']:,}", f"{r['prompt_tokens']:,}",
                  f"{r['completion_tokens']:,}", f"{r['cost_usd']:.2f}" if r["priced"] else "n/a")
    g = doc["total"]
    t.add_row("total", "", "", "", f"{g['requests']:,}", f"{g['prompt_tokens']:,}", f"{g['completion_tokens']:,}",
              f"{g['cost_usd']:.2f}", style="bold")
    console().print(t)
    if doc["unpriced_models"]:
        console().print(f"no price in oracle.prices for: {', '.join(doc['unpriced_models'])} (cost shown as n/a)")
