"""``tapir mode=plan``: what a configuration will ask of the oracle — requests per role and step, estimated
tokens and cost — computed from the pool, the rounds, the judge orders and the expansion counts, without
calling any model.

Token counts are estimates: 4 characters per token for prompts (templates + the pool's own text);
completions at the role's ``max_tokens`` (an upper bound) except where the data says more (the pool's given
responses for the teacher, one token for log-probability judging).
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import fmean
from typing import Any

from omegaconf import DictConfig

from tapir_exp.config import to_container
from tapir_exp.data import load_pool
from tapir_exp.eval.runner import item_limit
from tapir_exp.files import atomic_write_json, atomic_write_text
from tapir_exp.prompts import load_prompt
from tapir_exp.steps.curriculum import round_plan, rounds_to_run
from tapir_exp.steps.expand import PER_REQUEST

CHARS_PER_TOKEN = 4.0


def _tok(chars: float) -> float:
    return chars / CHARS_PER_TOKEN


def _template_tokens(name: str) -> float:
    return _tok(len(load_prompt(name).template))


def estimate(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir or cfg.paths.run_dir)
    pool = load_pool(cfg.data, None, int(cfg.seed))
    # load_pool moves given responses to meta unless use_given_responses; either way they tell lengths.
    given = [ex.output or ex.meta.get("given_output", "") for ex in pool]
    n = len(pool)
    instr_tok = fmean(_tok(len(ex.prompt)) for ex in pool)
    use_given = bool(cfg.data.get("use_given_responses", False))
    roles = to_container(cfg.oracle.roles)
    steps, cur = cfg.steps, cfg.curriculum
    rounds = rounds_to_run(cur)

    def max_tok(role: str) -> float:
        return float(roles[role].get("max_tokens") or 256)

    answer_tok = min(max_tok("teacher"), fmean(_tok(len(g)) for g in given)) if any(given) else max_tok("teacher")
    rows: list[dict[str, Any]] = []

    def add(role: str, step: str, rnd: Any, requests: float, prompt_tok: float, completion_tok: float) -> None:
        if requests <= 0:
            return
        rows.append({"role": role, "step": step, "round": rnd, "requests": int(math.ceil(requests)),
                     "prompt_tokens": int(requests * prompt_tok), "completion_tokens": int(requests * completion_tok)})

    # round 0: teacher answers and task labels
    need = sum(1 for ex in pool if not (use_given and ex.output.strip()))
    add("teacher", "teacher", 0, need, instr_tok, answer_tok)
    c = steps.classify
    n_labels = len(cfg.tasks.labels)
    classify_prompt = _template_tokens("classify") + n_labels * 3 + instr_tok
    if c.method == "given":
        n_cls = sum(1 for ex in pool if not ex.task)
    elif c.method == "distill":
        n_cls = min(int(c.sample_size), n)
    else:
        n_cls = n
    add("classifier", "classify", 0, n_cls, classify_prompt, min(max_tok("classifier"), 8))

    judge_scoring = steps.mfd.scoring
    fmt = steps.mfd.format
    orders = 2 if steps.mfd.both_orders else 1
    # pair: one request per order shows both answers (Lion); single: one request per answer per order
    per_item = orders * (2 if fmt == "single" else 1)
    by_logprob = judge_scoring == "logprob"  # assumes the backend returns logprobs (API, vLLM, local)
    if fmt == "single":
        judge_prompt = _template_tokens("judge_single") + instr_tok + 2 * answer_tok
        judge_completion = 1 if by_logprob else min(max_tok("judge"), 12)
    else:  # "[[a, b]]" alone under logprob scoring; a justification first otherwise
        judge_prompt = _template_tokens("judge_pair_scores" if by_logprob else "judge_pair") + instr_tok + 2 * answer_tok
        judge_completion = (min(max_tok("judge"), 8) if by_logprob
                            else max(max_tok("judge"), float(steps.mfd.get("justification_tokens") or 0)))
    ratios = to_container(cfg.tasks.ratios) if cfg.tasks.get("ratios") is not None else None
    styles = to_container(steps.refine.styles) or {}
    styled = _styled_fraction(pool, ratios if steps.balance.enabled else None, styles, steps.refine.get("default_style"))
    per_round = int(steps.expand.per_round) if steps.expand.enabled else 0
    check_expanded = per_round and (steps.expand.get("verify") or steps.expand.get("measure"))
    for r in range(1, rounds + 1):
        pool_r = n + (r - 1) * per_round
        judged = min(pool_r, int(steps.mfd.max_items)) if steps.mfd.get("max_items") is not None else pool_r
        add("judge", "mfd", r, judged * per_item, judge_prompt, judge_completion)
        if per_round:
            expand_requests = math.ceil(per_round / PER_REQUEST)
            add("expander", "expand", r, expand_requests,
                _template_tokens("expand") + int(steps.expand.shots) * instr_tok, max_tok("expander"))
            add("teacher", "expand_teacher", r, per_round, instr_tok, answer_tok)
        if check_expanded:
            add("judge", "expand_mfd", r, per_round * per_item, judge_prompt, judge_completion)
        size_r = round_plan(cur, r, pool_r + per_round)[1]
        if steps.refine.enabled:
            add("refiner", "refine", r, size_r * styled, _template_tokens("refine_stepwise") + instr_tok + answer_tok,
                max_tok("refiner"))

    ev = cfg.eval
    n_evals = (rounds + 1) if ev.get("every_round", True) else 1
    for r in range(rounds + 1 if n_evals > 1 else 1):
        rnd = r if n_evals > 1 else rounds
        if ev.alpaca_eval.enabled:
            items = _eval_items(item_limit(ev.alpaca_eval, "max_items"), 805)
            both = 2 if ev.alpaca_eval.get("both_orders", True) else 1
            add("eval_judge", "alpaca_eval", rnd, items * both, 150 + instr_tok + 2 * answer_tok, 1)
        if ev.mt_bench.enabled:
            qs = _eval_items(item_limit(ev.mt_bench, "max_questions"), 80)
            add("eval_judge", "mt_bench", rnd, qs * 2, 250 + 2 * instr_tok + 2 * answer_tok, min(max_tok("eval_judge"), 16))

    prices = to_container(cfg.oracle.get("prices")) or {}
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        model = _role_model(cfg, row["role"])
        price = prices.get(model) or {}
        row["model"] = model
        row["cost_usd"] = round(row["prompt_tokens"] / 1e6 * float(price.get("prompt", 0.0))
                                + row["completion_tokens"] / 1e6 * float(price.get("completion", 0.0)), 4)
        row["priced"] = bool(price)
        t = totals.setdefault(row["role"], {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0})
        for k in ("requests", "prompt_tokens", "completion_tokens", "cost_usd"):
            t[k] += row[k]
    grand = {k: sum(t[k] for t in totals.values()) for k in ("requests", "prompt_tokens", "completion_tokens", "cost_usd")}
    doc = {"pool": n, "rounds": rounds, "rows": rows, "by_role": totals, "total": grand,
           "unpriced_models": sorted({r["model"] for r in rows if not r["priced"]}),
           "assumptions": {"chars_per_token": CHARS_PER_TOKEN, "judge_format": fmt, "judge_orders": orders,
                           "judge_scoring": judge_scoring, "refined_fraction": round(styled, 3),
                           "completion_tokens": "role max_tokens (upper bound) unless the pool's responses say less"}}
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


def _eval_items(cap: Any, default: int) -> int:
    return default if cap is None else int(cap)


def _role_model(cfg: DictConfig, role: str) -> str:
    backend = cfg.oracle.roles[role].backend
    node = cfg.oracle.backends.get(backend)
    return str(node.model) if node is not None else backend


def _styled_fraction(pool, ratios, styles, default_style) -> float:
    if default_style:
        return 1.0
    if ratios:
        total = sum(ratios.values()) or 1.0
        return sum(v for k, v in ratios.items() if k in styles) / total
    labelled = [ex.task for ex in pool if ex.task]
    if labelled:
        return sum(1 for t in labelled if t in styles) / len(labelled)
    return 0.5


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
