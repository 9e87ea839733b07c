"""One round's evaluation of a student checkpoint.

AlpacaEval-style: the student answers the eval instructions; the ``eval_judge`` role compares its answer
with the reference output in both orders (position bias), by the probabilities of the tokens "1"/"2" when
the backend gives log-probabilities (as AlpacaEval 2's weighted judge) or by the parsed digit otherwise.
MT-Bench-style: two-turn questions, the judge grades each answer 1-10, reference answers shown where the
question file has them. Outputs are exported in alpaca_eval's ``model_outputs.json`` format and FastChat's
answer JSONL, so the official tools can re-judge them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tapir_exp.errors import DataError
from tapir_exp.eval.metrics import GamedAnnotations, length_controlled_win_rate, win_rate
from tapir_exp.prompts import render
from tapir_exp.records import iter_json_array
from tapir_exp.store import atomic_write_json, atomic_write_text


def load_alpaca_eval(path: str | Path, limit: int | None) -> list[dict[str, Any]]:
    try:
        records = list(iter_json_array(Path(path)))
    except FileNotFoundError as e:
        raise DataError(path, None, None, "file not found (eval.alpaca_eval.path)") from e
    for where, it in records:
        if not isinstance(it, dict) or not str(it.get("instruction", "")).strip():
            raise DataError(path, where, "instruction", "expected a non-empty string")
    items = [it for _, it in records]
    return items[:limit] if limit else items


def load_mt_bench(path: str | Path, limit: int | None) -> list[dict[str, Any]]:
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise DataError(path, None, None, "file not found (eval.mt_bench.path)") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, n, None, f"malformed JSON: {e.msg}") from e
        if not isinstance(q.get("turns"), list) or not q["turns"]:
            raise DataError(path, n, "turns", "expected a non-empty list of user turns")
        out.append(q)
    return out[:limit] if limit else out


def _r4(v: float) -> float:
    return float(f"{v:.4f}")  # (``round`` is a parameter name in this module)


def _preference(res: Any, model_slot: int) -> float | None:
    """Map a rating on {1, 2} (which response is better) to alpaca_eval's scale: 2 = model better."""
    if res.value is None:
        return None
    return res.value if model_slot == 2 else 3.0 - res.value


def alpaca_eval(cfg: DictConfig, model_dir: Path, oracle: Any, generator: Any, out_dir: Path, round: int,
                model_name: str) -> dict[str, float]:
    ae = cfg.eval.alpaca_eval
    items = load_alpaca_eval(ae.path, ae.get("max_items"))
    gens = generator.generate(model_dir, [[{"role": "user", "content": it["instruction"]}] for it in items])
    outputs = [{"instruction": it["instruction"], "output": g.text.strip(), "generator": model_name,
                "dataset": it.get("dataset", "custom")} for it, g in zip(items, gens, strict=True)]
    atomic_write_json(out_dir / "model_outputs.json", outputs)
    both = bool(ae.get("both_orders", True))
    requests, slots = [], []
    for i, (it, out) in enumerate(zip(items, outputs, strict=True)):
        orders = (1, 2) if both else (1 + int(hashlib.sha256(it["instruction"].encode()).hexdigest(), 16) % 2,)
        for model_slot in orders:
            o1, o2 = (out["output"], it["output"]) if model_slot == 1 else (it["output"], out["output"])
            prompt = render("eval_pairwise", instruction=it["instruction"], output_1=o1, output_2=o2)
            requests.append(oracle.request("eval_judge", [{"role": "user", "content": prompt}],
                                           id=f"alpaca_eval/{i}/{model_slot}", max_tokens=4))
            slots.append((i, model_slot))
    results = oracle.rating_many("eval_judge", requests, step="eval_alpaca", round=round, scale=(1, 2))
    per_item: dict[int, list[float]] = {}
    annotations = []
    for (i, slot), res in zip(slots, results, strict=True):
        pref = _preference(res, slot)
        annotations.append({"instruction": items[i]["instruction"], "model_slot": slot, "preference": pref,
                            "method": res.method, "judge_text": res.text, "error": res.error})
        if pref is not None:
            per_item.setdefault(i, []).append(pref)
    atomic_write_json(out_dir / "annotations.json", annotations)
    prefs = [sum(v) / len(v) if i in per_item else None for i, v in ((i, per_item.get(i, [])) for i in range(len(items)))]
    wr, se = win_rate(prefs)
    lc_cfg = ae.get("lc") or {}
    gamed = GamedAnnotations.load(lc_cfg["gamed_annotations"]) if lc_cfg.get("gamed_annotations") else None
    lc = length_controlled_win_rate(prefs, [len(o["output"]) for o in outputs], [len(it["output"]) for it in items],
                                    gamed=gamed, regularize_to_baseline=float(lc_cfg.get("regularize_to_baseline", 0.2)),
                                    cv_folds=int(lc_cfg.get("cv_folds", 5)))
    if lc is not None:
        atomic_write_json(out_dir / "lc_glm.json", {"glm": lc.glm, "C": lc.C, "lc_win_rate": lc.win_rate,
                                                     "lc_standard_error": lc.standard_error})
    metrics = {"alpaca_eval/win_rate": wr, "alpaca_eval/standard_error": se,
               "alpaca_eval/lc_win_rate": lc and lc.win_rate, "alpaca_eval/lc_standard_error": lc and lc.standard_error,
               "alpaca_eval/n_judged": sum(p is not None for p in prefs), "alpaca_eval/n_items": len(items),
               "alpaca_eval/avg_length": sum(len(o["output"]) for o in outputs) / max(1, len(outputs))}
    return {k: (_r4(v) if isinstance(v, float) else v) for k, v in metrics.items() if v is not None}


def mt_bench(cfg: DictConfig, model_dir: Path, oracle: Any, generator: Any, out_dir: Path, round: int,
             model_name: str) -> dict[str, float]:
    mt = cfg.eval.mt_bench
    questions = load_mt_bench(mt.path, mt.get("max_questions"))
    histories: list[list[dict[str, str]]] = [[] for _ in questions]
    answers: list[list[str]] = [[] for _ in questions]
    for turn in range(max(len(q["turns"]) for q in questions)):
        todo = [i for i, q in enumerate(questions) if turn < len(q["turns"])]
        for i in todo:
            histories[i].append({"role": "user", "content": questions[i]["turns"][turn]})
        gens = generator.generate(model_dir, [histories[i] for i in todo])
        for i, g in zip(todo, gens, strict=True):
            histories[i].append({"role": "assistant", "content": g.text.strip()})
            answers[i].append(g.text.strip())
    stamp = time.time()
    atomic_write_text(out_dir / "mt_bench_answers.jsonl", "".join(json.dumps({
        "question_id": q["question_id"], "answer_id": f"{model_name}-{q['question_id']}", "model_id": model_name,
        "choices": [{"index": 0, "turns": a}], "tstamp": stamp}) + "\n" for q, a in zip(questions, answers, strict=True)))
    requests, keys = [], []
    for i, q in enumerate(questions):
        for turn in range(len(answers[i])):
            convo = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in histories[i][: 2 * turn + 2])
            ref = (q.get("reference") or [None] * (turn + 1))
            ref_text = ref[turn] if turn < len(ref) else None
            block = f"\nA reference answer to the last question, for checking correctness:\n{ref_text}" if ref_text else ""
            requests.append(oracle.request("eval_judge", [{"role": "user", "content": render(
                "eval_mt_bench", conversation=convo, reference_block=block)}], id=f"mt_bench/{q['question_id']}/{turn + 1}"))
            keys.append((i, turn))
    results = oracle.rating_many("eval_judge", requests, step="eval_mt_bench", round=round, scale=(1, 10))
    judgments = []
    by_turn: dict[int, list[float]] = {}
    by_cat: dict[str, list[float]] = {}
    for (i, turn), res in zip(keys, results, strict=True):
        q = questions[i]
        judgments.append({"question_id": q["question_id"], "turn": turn + 1, "model": model_name, "score": res.value,
                          "method": res.method, "judge_text": res.text, "error": res.error})
        if res.value is not None:
            by_turn.setdefault(turn + 1, []).append(res.value)
            by_cat.setdefault(q.get("category", "other"), []).append(res.value)
    atomic_write_text(out_dir / "mt_bench_judgments.jsonl", "".join(json.dumps(j) + "\n" for j in judgments))
    allv = [v for vs in by_turn.values() for v in vs]
    metrics: dict[str, float] = {}
    if allv:
        metrics["mt_bench/score"] = _r4(sum(allv) / len(allv))
    for t, vs in by_turn.items():
        metrics[f"mt_bench/turn_{t}"] = _r4(sum(vs) / len(vs))
    for c, vs in by_cat.items():
        metrics[f"mt_bench/{c}"] = _r4(sum(vs) / len(vs))
    metrics["mt_bench/n_judged"] = len(allv)
    return metrics


def evaluate_round(cfg: DictConfig, model_dir: str | Path, oracle: Any, generator: Any, out_dir: str | Path,
                   round: int, model_name: str) -> dict[str, float]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    if cfg.eval.alpaca_eval.enabled:
        metrics.update(alpaca_eval(cfg, Path(model_dir), oracle, generator, out_dir, round, model_name))
    if cfg.eval.mt_bench.enabled:
        metrics.update(mt_bench(cfg, Path(model_dir), oracle, generator, out_dir, round, model_name))
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
