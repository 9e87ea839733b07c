"""MT-Bench single-answer grading: which prompt the judge sees for a (question, answers, turn), and how its
reply becomes a score.

With FastChat's files (``eval.mt_bench.judge_prompts`` = its ``judge_prompts.jsonl``, ``eval.mt_bench.references``
= its ``reference_answer/<model>.jsonl``) this is FastChat's ``gen_judgment --mode single``: turn 1 is graded
with ``single-v1`` (``single-math-v1`` with the reference's first turn for the reference categories), turn 2 with
the ``-multi-turn`` prompts showing both turns (and both reference turns); the judge is asked with temperature 0
and at most 2048 tokens; the rating is FastChat's ``[[rating]]`` (else ``[rating]``), −1 when neither is found,
and −1 scores are left out of the averages as FastChat's ``show_result`` does.

Without them: our own prompt (``prompts/eval_mt_bench.txt``) with the same structure, rated on 1–10 by the
``eval_judge`` role's scoring (log-probabilities where the backend has them).
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapir_exp.errors import ConfigError, DataError
from tapir_exp.prompts import load_prompt, render
from tapir_exp.records import _iter_jsonl

# FastChat's NEED_REF_CATS (fastchat/llm_judge/common.py): the categories graded against a reference answer
REFERENCE_CATEGORIES = ("math", "reasoning", "coding", "arena-hard-200")
FASTCHAT_PROMPTS = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")
# FastChat's run_judge_single: chat_completion_openai(model, conv, temperature=0, max_tokens=2048)
FASTCHAT_SAMPLING = {"temperature": 0.0, "max_tokens": 2048}
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def fastchat_rating(judgment: str) -> float:
    """FastChat's single-answer rating: ``[[x]]``, else ``[x]``, else −1 (also −1 where its literal_eval fails)."""
    match = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    if not match:
        return -1
    try:
        return ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return -1


def _text_hash(*texts: str) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
    return h.hexdigest()[:12]


def needs_reference(question: dict[str, Any]) -> bool:
    return question.get("category") in REFERENCE_CATEGORIES


@dataclass
class FastChatJudge:
    prompts: dict[str, dict[str, Any]]
    references: dict[Any, list[str]]
    prompts_hash: str
    references_hash: str | None

    @classmethod
    def load(cls, judge_prompts: str | Path, references: str | Path | None) -> FastChatJudge:
        prompts: dict[str, dict[str, Any]] = {}
        path = Path(judge_prompts)
        if not path.is_file():
            raise DataError(path, None, None, "file not found (eval.mt_bench.judge_prompts)")
        for where, rec in _iter_jsonl(path):
            if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
                raise DataError(path, where, "name", "expected a FastChat judge prompt record with a name")
            prompts[rec["name"]] = rec
        for name in FASTCHAT_PROMPTS:
            rec = prompts.get(name)
            if rec is None:
                raise DataError(path, None, "name", f"no judge prompt named {name!r} (single-answer grading needs "
                                + ", ".join(FASTCHAT_PROMPTS) + ")")
            for key in ("system_prompt", "prompt_template"):
                if not isinstance(rec.get(key), str):
                    raise DataError(path, f"prompt {name}", key, "expected a string")
            if rec.get("output_format") != "[[rating]]":
                raise DataError(path, f"prompt {name}", "output_format",
                                f"expected '[[rating]]' (single-answer grading), got {rec.get('output_format')!r}")
        refs: dict[Any, list[str]] = {}
        if references is not None:
            rpath = Path(references)
            if not rpath.is_file():
                raise DataError(rpath, None, None, "file not found (eval.mt_bench.references)")
            for where, rec in _iter_jsonl(rpath):
                try:
                    turns = rec["choices"][0]["turns"]
                    qid = rec["question_id"]
                except (KeyError, IndexError, TypeError):
                    raise DataError(rpath, where, "choices", "expected FastChat's answer format "
                                    '{"question_id", "choices": [{"turns": [...]}]}') from None
                if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
                    raise DataError(rpath, where, "choices[0].turns", "expected a list of strings")
                refs[qid] = turns
        return cls(prompts, refs, _text_hash(path.read_text(encoding="utf-8")),
                   _text_hash(Path(references).read_text(encoding="utf-8")) if references is not None else None)

    def check(self, questions: list[dict[str, Any]], where: str) -> None:
        """As FastChat's check_data: every reference-category question needs a reference answer."""
        for q in questions:
            if needs_reference(q) and q["question_id"] not in self.references:
                raise DataError(where, f"question {q['question_id']}", "references",
                                f"category {q['category']!r} is graded against a reference answer, and the reference "
                                "file (eval.mt_bench.references) has none for this question")

    def messages(self, question: dict[str, Any], answers: list[str], turn: int) -> list[dict[str, str]]:
        """The judge's chat messages for turn 1 or 2, as FastChat's run_judge_single builds them."""
        multi = turn == 2
        ref = self.references.get(question["question_id"]) if needs_reference(question) else None
        name = ("single-math-v1" if ref is not None else "single-v1") + ("-multi-turn" if multi else "")
        template = self.prompts[name]
        kw = {}
        if ref is not None:
            kw["ref_answer_1"] = ref[0]
            if multi:
                kw["ref_answer_2"] = ref[1]
        if multi:
            user = template["prompt_template"].format(question_1=question["turns"][0], question_2=question["turns"][1],
                                                      answer_1=answers[0], answer_2=answers[1], **kw)
        else:
            user = template["prompt_template"].format(question=question["turns"][0], answer=answers[0], **kw)
        system = template["system_prompt"]
        return ([{"role": "system", "content": system}] if system != "" else []) + [{"role": "user", "content": user}]

    @staticmethod
    def turns(question: dict[str, Any]) -> list[int]:
        """FastChat grades turn 1, and turn 2 of two-turn questions only."""
        return [1, 2] if len(question["turns"]) == 2 else [1]

    def protocol(self) -> dict[str, Any]:
        return {"judge_prompts": "fastchat", "judge_prompts_hash": self.prompts_hash,
                "references_hash": self.references_hash}


class TapirMTJudge:
    """Our own prompt, same structure: turn t shows the conversation up to t; the question file's reference
    answer is shown for the reference categories only."""

    def check(self, questions: list[dict[str, Any]], where: str) -> None:
        return None

    def messages(self, question: dict[str, Any], answers: list[str], turn: int) -> list[dict[str, str]]:
        convo = []
        for t in range(turn):
            convo += [f"User: {question['turns'][t]}", f"Assistant: {answers[t]}"]
        refs = question.get("reference") or []
        ref = refs[turn - 1] if needs_reference(question) and turn - 1 < len(refs) else None
        block = f"\nA reference answer to the last question, for checking correctness:\n{ref}" if ref else ""
        return [{"role": "user", "content": render("eval_mt_bench", conversation="\n\n".join(convo),
                                                   reference_block=block)}]

    @staticmethod
    def turns(question: dict[str, Any]) -> list[int]:
        return list(range(1, len(question["turns"]) + 1))

    def protocol(self) -> dict[str, Any]:
        return {"judge_prompts": "tapir_mt_bench", "judge_prompts_hash": _text_hash(load_prompt("eval_mt_bench").template),
                "references_hash": None}


def build_mt_judge(mt_cfg: Any) -> FastChatJudge | TapirMTJudge:
    if mt_cfg.get("references") and not mt_cfg.get("judge_prompts"):
        raise ConfigError("eval.mt_bench.references", "FastChat's reference answers go with FastChat's judge prompts: "
                          "set eval.mt_bench.judge_prompts=<judge_prompts.jsonl> too")
    if mt_cfg.get("judge_prompts"):
        return FastChatJudge.load(mt_cfg.judge_prompts, mt_cfg.get("references"))
    return TapirMTJudge()
