"""One evaluation of a model: AlpacaEval 2.0 (pairwise win rate against reference outputs, raw and
length-controlled) and MT-Bench (single-answer grading of two-turn answers).

The evaluated answers come from the student (an HF checkpoint, through the generation config) or from files a
user already has: alpaca_eval's ``model_outputs.json`` and FastChat's answer JSONL. Who judges is configured per
suite: ``eval.alpaca_eval.annotator`` (our ``tapir_pairwise`` or an alpaca_eval annotator config, see
:mod:`tapir_exp.eval.annotators`) and ``eval.mt_bench.judge_prompts`` / ``references`` (FastChat's files, see
:mod:`tapir_exp.eval.mt_judge`). Every result carries the protocol that produced it (``<suite>/protocol/*``
keys: annotator or judge prompts and their hash, judge model, LC formula) and says whether it is a leaderboard
number. Outputs are exported in alpaca_eval's ``model_outputs.json`` and FastChat's answer format, so the
official tools can re-judge them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tapir_exp.config import resource_path
from tapir_exp.errors import ConfigError, DataError
from tapir_exp.eval.annotators import build_annotator
from tapir_exp.eval.metrics import LC_FORMULAS, GamedAnnotations, length_controlled_win_rate, win_rate
from tapir_exp.eval.mt_judge import FASTCHAT_SAMPLING, FastChatJudge, build_mt_judge, fastchat_rating
from tapir_exp.files import atomic_write_json, atomic_write_text
from tapir_exp.records import _iter_jsonl, iter_json_array

# FastChat's gen_judgment judges with --judge-model gpt-4 unless told otherwise
FASTCHAT_JUDGE_MODEL = "gpt-4"


def _is_demo(path: Any) -> bool:
    demo = Path(resource_path("demo")).resolve()
    return demo in Path(str(path)).resolve().parents


def item_limit(node: DictConfig, key: str) -> int | None:
    """The suite's cap (``max_items`` / ``max_questions``). Unset (null), the embedded demo set is cut to
    ``demo_<key>`` and any other file is evaluated whole: pointing ``path`` at a file never caps it silently."""
    cap = node.get(key)
    if cap is not None:
        return int(cap)
    demo_cap = node.get(f"demo_{key}")
    return int(demo_cap) if demo_cap is not None and _is_demo(node.path) else None


def load_alpaca_eval(path: str | Path) -> list[dict[str, Any]]:
    try:
        records = list(iter_json_array(Path(path)))
    except FileNotFoundError as e:
        raise DataError(path, None, None, "file not found (eval.alpaca_eval.path)") from e
    for where, it in records:
        if not isinstance(it, dict) or not str(it.get("instruction", "")).strip():
            raise DataError(path, where, "instruction", "expected a non-empty string")
        if not isinstance(it.get("output"), str):
            raise DataError(path, where, "output", "expected the reference output (a string)")
    return [it for _, it in records]


def load_model_outputs(path: str | Path, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """alpaca_eval's ``model_outputs.json``, matched to the evaluation items by instruction (as alpaca_eval
    merges them); every item needs an output."""
    try:
        records = list(iter_json_array(Path(path)))
    except FileNotFoundError as e:
        raise DataError(path, None, None, "file not found (eval.model_outputs)") from e
    by_instruction: dict[str, dict[str, Any]] = {}
    for where, rec in records:
        for field in ("instruction", "output"):
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise DataError(path, where, field, "expected a string (alpaca_eval's model_outputs format)")
        by_instruction.setdefault(rec["instruction"], rec)
    out = []
    for n, it in enumerate(items):
        rec = by_instruction.get(it["instruction"])
        if rec is None:
            raise DataError(path, None, "instruction", f"no output for evaluation item {n} "
                            f"({it['instruction'][:60]!r}) of eval.alpaca_eval.path")
        out.append({"instruction": it["instruction"], "output": rec["output"],
                    "generator": str(rec.get("generator") or "model"), "dataset": it.get("dataset", "custom")})
    return out


def load_mt_bench(path: str | Path) -> list[dict[str, Any]]:
    out = []
    if not Path(path).is_file():
        raise DataError(path, None, None, "file not found (eval.mt_bench.path)")
    for where, q in _iter_jsonl(Path(path)):
        if not isinstance(q, dict) or not isinstance(q.get("turns"), list) or not q["turns"]:
            raise DataError(path, where, "turns", "expected a non-empty list of user turns")
        if "question_id" not in q:
            raise DataError(path, where, "question_id", "expected FastChat's question id")
        out.append(q)
    return out


def load_mt_bench_answers(path: str | Path, questions: list[dict[str, Any]]) -> list[list[str]]:
    """FastChat's answer JSONL (``model_answer/<model>.jsonl``): the turns of choice 0 for every question."""
    if not Path(path).is_file():
        raise DataError(path, None, None, "file not found (eval.mt_bench_answers)")
    by_id: dict[Any, list[str]] = {}
    for where, rec in _iter_jsonl(Path(path)):
        try:
            turns = rec["choices"][0]["turns"]
            by_id[rec["question_id"]] = [str(t) for t in turns]
        except (KeyError, IndexError, TypeError):
            raise DataError(path, where, "choices", 'expected FastChat\'s answer format '
                            '{"question_id", "choices": [{"turns": [...]}]}') from None
    out = []
    for q in questions:
        turns = by_id.get(q["question_id"])
        if turns is None or len(turns) < len(q["turns"]):
            raise DataError(path, f"question {q['question_id']}", "choices[0].turns",
                            f"expected an answer to each of the question's {len(q['turns'])} turns")
        out.append(turns)
    return out



def _note(reasons: list[str], what: str) -> str:
    return f"leaderboard protocol ({what})" if not reasons else "not a leaderboard number: " + "; ".join(reasons)


def alpaca_eval(cfg: DictConfig, model_dir: Path | None, oracle: Any, generator: Any, out_dir: Path, rnd: int,
                model_name: str, model_outputs: str | Path | None = None) -> dict[str, Any]:
    ae = cfg.eval.alpaca_eval
    annotator = build_annotator(ae)
    every = load_alpaca_eval(ae.path)
    items = every[:item_limit(ae, "max_items") or len(every)]
    if model_outputs is not None:
        outputs = load_model_outputs(model_outputs, items)
    else:
        gens = generator.generate(model_dir, [[{"role": "user", "content": it["instruction"]}] for it in items])
        outputs = [{"instruction": it["instruction"], "output": g.text.strip(), "generator": model_name,
                    "dataset": it.get("dataset", "custom")} for it, g in zip(items, gens, strict=True)]
    atomic_write_json(out_dir / "model_outputs.json", outputs)
    annotated = annotator.annotate(items, outputs, oracle, rnd)
    atomic_write_json(out_dir / "annotations.json", annotated.records)
    prefs = annotated.preferences
    wr, se = win_rate(prefs)
    lc_cfg = ae.get("lc") or {}
    gamed = GamedAnnotations.load(lc_cfg["gamed_annotations"]) if lc_cfg.get("gamed_annotations") else None
    lc = length_controlled_win_rate(prefs, [len(o["output"]) for o in outputs], [len(it["output"]) for it in items],
                                    gamed=gamed, regularize_to_baseline=float(lc_cfg.get("regularize_to_baseline", 0.2)),
                                    cv_folds=int(lc_cfg.get("cv_folds", 5)))
    formula = LC_FORMULAS["v1" if gamed is not None else "minimal"]
    if lc is not None:
        atomic_write_json(out_dir / "lc_glm.json", {"glm": lc.glm, "lc_formula": formula, "C": lc.C,
                                                     "lc_win_rate": lc.win_rate, "lc_standard_error": lc.standard_error})
    protocol = {**annotated.protocol, "judge_model": oracle.role_model("eval_judge"), "lc_formula": formula}
    reasons = []
    if annotated.protocol.get("annotator_model") is None:
        reasons.append(f"our own judge prompt ({protocol['annotator']})")
    elif protocol["judge_model"] != protocol["annotator_model"]:
        reasons.append(f"judge model {protocol['judge_model']} is not the annotator's {protocol['annotator_model']}")
    if gamed is None:
        reasons.append("LC formula minimal, not length_controlled_v1")
    if len(items) < len(every):
        reasons.append(f"{len(items)} of the {len(every)} items of {Path(str(ae.path)).name}")
    metrics: dict[str, Any] = {
        "alpaca_eval/win_rate": wr, "alpaca_eval/standard_error": se,
        "alpaca_eval/lc_win_rate": lc and lc.win_rate, "alpaca_eval/lc_standard_error": lc and lc.standard_error,
        "alpaca_eval/n_judged": sum(p is not None for p in prefs), "alpaca_eval/n_items": len(items),
        "alpaca_eval/avg_length": sum(len(o["output"]) for o in outputs) / max(1, len(outputs)),
        **{f"alpaca_eval/protocol/{k}": v for k, v in protocol.items() if v is not None},
        "alpaca_eval/protocol/leaderboard": _note(reasons, f"{protocol['annotator']}, {formula}")}
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items() if v is not None}


def _answer(generator: Any, model_dir: Path | None, questions: list[dict[str, Any]]) -> list[list[str]]:
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
    return answers


def mt_bench(cfg: DictConfig, model_dir: Path | None, oracle: Any, generator: Any, out_dir: Path, rnd: int,
             model_name: str, answers_file: str | Path | None = None) -> dict[str, Any]:
    mt = cfg.eval.mt_bench
    judge = build_mt_judge(mt)
    every = load_mt_bench(mt.path)
    questions = every[:item_limit(mt, "max_questions") or len(every)]
    judge.check(questions, str(mt.path))
    answers = (load_mt_bench_answers(answers_file, questions) if answers_file is not None
               else _answer(generator, model_dir, questions))
    stamp = time.time()
    atomic_write_text(out_dir / "mt_bench_answers.jsonl", "".join(json.dumps({
        "question_id": q["question_id"], "answer_id": f"{model_name}-{q['question_id']}", "model_id": model_name,
        "choices": [{"index": 0, "turns": a}], "tstamp": stamp}) + "\n" for q, a in zip(questions, answers, strict=True)))
    fastchat = isinstance(judge, FastChatJudge)
    sampling = FASTCHAT_SAMPLING if fastchat else {}
    requests, keys = [], []
    for i, q in enumerate(questions):
        for turn in judge.turns(q):
            requests.append(oracle.request("eval_judge", judge.messages(q, answers[i], turn),
                                           id=f"mt_bench/{q['question_id']}/{turn}", **sampling))
            keys.append((i, turn))
    if fastchat:  # one request each, FastChat's parsing, -1 when there is no rating (no re-asks)
        chats = oracle.chat_many("eval_judge", requests, step="eval_mt_bench", rnd=rnd)
        scored = [(fastchat_rating(c.text) if c.ok else -1, c.text, "fastchat", c.error) for c in chats]
    else:
        scored = [(r.value, r.text, r.method, r.error)
                  for r in oracle.rating_many("eval_judge", requests, step="eval_mt_bench", rnd=rnd, scale=(1, 10))]
    judgments = []
    by_turn: dict[int, list[float]] = {}
    by_cat: dict[str, list[float]] = {}
    for (i, turn), (score, text, method, error) in zip(keys, scored, strict=True):
        q = questions[i]
        judgments.append({"question_id": q["question_id"], "turn": turn, "model": model_name, "score": score,
                          "method": method, "judge_text": text, "error": error})
        if score is not None and score != -1:  # FastChat's show_result drops -1
            by_turn.setdefault(turn, []).append(score)
            by_cat.setdefault(q.get("category", "other"), []).append(score)
    atomic_write_text(out_dir / "mt_bench_judgments.jsonl", "".join(json.dumps(j) + "\n" for j in judgments))
    allv = [v for vs in by_turn.values() for v in vs]
    metrics: dict[str, Any] = {}
    if allv:
        metrics["mt_bench/score"] = round(sum(allv) / len(allv), 4)
    for t, vs in by_turn.items():
        metrics[f"mt_bench/turn_{t}"] = round(sum(vs) / len(vs), 4)
    for c, vs in by_cat.items():
        metrics[f"mt_bench/{c}"] = round(sum(vs) / len(vs), 4)
    metrics["mt_bench/n_judged"] = len(allv)
    metrics["mt_bench/n_questions"] = len(questions)
    protocol = {**judge.protocol(), "judge_model": oracle.role_model("eval_judge")}
    reasons = [] if fastchat else [f"our own judge prompt ({protocol['judge_prompts']})"]
    if fastchat and protocol["judge_model"] != FASTCHAT_JUDGE_MODEL:
        reasons.append(f"judge model {protocol['judge_model']}, not FastChat's {FASTCHAT_JUDGE_MODEL}")
    if len(questions) < len(every):
        reasons.append(f"{len(questions)} of the {len(every)} questions of {Path(str(mt.path)).name}")
    metrics.update({f"mt_bench/protocol/{k}": v for k, v in protocol.items() if v is not None})
    metrics["mt_bench/protocol/leaderboard"] = _note(reasons, f"FastChat single grading, {protocol['judge_model']}")
    return metrics


def evaluate_round(cfg: DictConfig, model_dir: str | Path | None, oracle: Any, generator: Any, out_dir: str | Path,
                   rnd: int, model_name: str, model_outputs: str | Path | None = None,
                   mt_bench_answers: str | Path | None = None) -> dict[str, Any]:
    """Both suites (as enabled). ``model_outputs`` / ``mt_bench_answers``: score these files instead of
    generating with ``model_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    if cfg.eval.alpaca_eval.enabled:
        if model_dir is None and model_outputs is None:
            raise ConfigError("eval.model_outputs", "AlpacaEval needs a model (eval.model) or its outputs")
        metrics.update(alpaca_eval(cfg, Path(model_dir) if model_dir else None, oracle, generator, out_dir, rnd,
                                   model_name, model_outputs))
    if cfg.eval.mt_bench.enabled:
        if model_dir is None and mt_bench_answers is None:
            raise ConfigError("eval.mt_bench_answers", "MT-Bench needs a model (eval.model) or its answers")
        metrics.update(mt_bench(cfg, Path(model_dir) if model_dir else None, oracle, generator, out_dir, rnd,
                                model_name, mt_bench_answers))
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
