"""The MFD judge of TAPIR's lineage (Lion: one request per order showing both answers, two scores, both orders
averaged, hard at a gap >= 1), its threshold, the expansion's near-duplicate filter, and what `mode=plan`
says the judge will cost - each against the real oracle client over real HTTP (the project's fake
OpenAI-compatible server) or the real config tree."""

from __future__ import annotations

import json
import re

import pytest

from tapir_exp.llm import build_oracle
from tapir_exp.records import Example
from tapir_exp.steps import expand, judge
from tapir_exp.testing.openai_server import FakeOpenAIServer
from tapir_exp.testing.oracle_config import oracle_cfg
from tests.test_config import _compose

# ---------------------------------------------------------------------------- a judge with known ratings
# An answer "s7..." is worth 7 wherever it is shown; "p6-5" is worth 6 shown first and 5 shown second (a
# position-biased judge), so averaging both orders gives it 5.5.


def _worth(answer: str, slot: int) -> int:
    m = re.fullmatch(r"s(\d+)\b.*", answer.strip())
    if m:
        return int(m.group(1))
    first, second = re.fullmatch(r"p(\d+)-(\d+)", answer.strip()).groups()
    return int(first if slot == 1 else second)


def _section(prompt: str, name: str) -> str:
    return re.search(rf"\[{re.escape(name)}\]\n(.*?)\n", prompt + "\n").group(1)


def judge_responder(body: dict) -> dict:
    prompt = body["messages"][-1]["content"]
    if "grade only" in prompt:
        slot = 1 if "grade only Assistant 1" in prompt else 2
        score = _worth(_section(prompt, f"Assistant {slot}"), slot)
        return {"text": f"[[{score}]]", "top_logprobs": [{"[[": 0.0}, {str(score): 0.0}, {"]]": 0.0}]}
    a, b = _worth(_section(prompt, "Assistant 1"), 1), _worth(_section(prompt, "Assistant 2"), 2)
    if "justify" in prompt:
        return {"text": f"On a [[1, 10]] scale Assistant 1 is thorough and Assistant 2 terse.\n[[{a}, {b}]]"}
    return {"text": f"[[{a}, {b}]]",
            "top_logprobs": [{"[[": 0.0}, {str(a): 0.0}, {",": 0.0}, {str(b): 0.0}, {"]]": 0.0}]}


# (teacher answer, student answer, MFD with both orders averaged)
CASES = {"gap2": ("s7", "s5", 2.0), "gap1": ("s6", "s5", 1.0), "gap_half": ("p6-5", "s5", 0.5),
         "tie": ("s5 (teacher)", "s5 (student)", 0.0), "student_better": ("s4", "s6", -2.0)}


def items() -> list[Example]:
    return [Example(id=k, instruction=f"Question {k}", output=t, meta={"student": s}) for k, (t, s, _) in CASES.items()]


@pytest.fixture(scope="module")
def judge_server():
    with FakeOpenAIServer(responder=judge_responder) as srv:
        yield srv


def _judge(server, tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    oracle = build_oracle(oracle_cfg(server.base_url, tmp_path / "cache.sqlite"), tmp_path)
    before = server.request_count
    try:
        out, counts = judge.judge_mfd(items(), oracle, delta=1.0, **kw)
    finally:
        oracle.close()
    return {ex.id: ex for ex in out}, counts, server.requests[before:]


@pytest.mark.parametrize("fmt", ["pair", "single"])
def test_mfd_both_orders_averaged_and_hard_past_delta(judge_server, tmp_path, fmt):
    got, counts, sent = _judge(judge_server, tmp_path, fmt=fmt, compare="gt", scoring="logprob")
    assert {k: ex.meta["mfd"] for k, ex in got.items()} == pytest.approx({k: c[2] for k, c in CASES.items()})
    # hard means MFD > delta = 1: not a gap of 0.5 (MFD > 0 would say it is), not a gap of exactly 1 under gt
    assert {k for k, ex in got.items() if ex.meta["hard"]} == {"gap2"}
    assert counts["hard"] == 1
    # every rating came from log-probabilities
    assert {o["method"] for ex in got.values() for o in ex.meta["judge"]["orders"].values()} == {"logprob"}
    # pair: one request per order (2 per item); single: one per answer per order (4 per item)
    assert len(sent) == len(CASES) * (2 if fmt == "pair" else 4)


def test_compare_ge_is_lions_rule(judge_server, tmp_path):
    got, _, _ = _judge(judge_server, tmp_path, fmt="pair", compare="ge", scoring="logprob")
    assert {k for k, ex in got.items() if ex.meta["hard"]} == {"gap2", "gap1"}
    with pytest.raises(ValueError, match="compare"):
        judge.judge_mfd(items(), None, delta=1.0, compare="gte")


def test_pair_prompt_asks_for_a_justification_unless_scored_by_logprobs(judge_server, tmp_path):
    got, _, sent = _judge(judge_server, tmp_path, fmt="pair", compare="ge", scoring="generative",
                          justification_tokens=300)
    assert all("justify your grades briefly" in b["messages"][-1]["content"] for b in sent)
    assert all(b["max_tokens"] == 300 for b in sent)  # room for the justification before the scores
    # the scores are read from the reply's last [[a, b]], after the justification
    assert {k: ex.meta["mfd"] for k, ex in got.items()} == pytest.approx({k: c[2] for k, c in CASES.items()})
    assert {k for k, ex in got.items() if ex.meta["hard"]} == {"gap2", "gap1"}
    _, _, sent = _judge(judge_server, tmp_path / "lp", fmt="pair", compare="ge", scoring="logprob")
    assert not any("justify" in b["messages"][-1]["content"] for b in sent)
    assert all(b.get("logprobs") for b in sent)


# ---------------------------------------------------------------------------- expansion's near-duplicate filter

POOL = ["Write a Python function that reverses a list of integers.",
        "Explain why the sky looks blue during the day."]
CANDIDATES = [
    "Write a Python function that reverses a list of strings.",  # near-duplicate of the pool (ROUGE-L 0.9)
    "Explain why the sky looks blue during the day.",  # exact duplicate of the pool
    "Compute the area of a circle whose radius is seven metres.",  # new
    "Compute the area of a circle whose radius is nine metres.",  # near-duplicate of the candidate before
    "Name three rivers that flow through more than two countries.",  # new
]


def expander(body: dict) -> str:
    return "\n".join(f"{i + 1}. {c}" for i, c in enumerate(CANDIDATES))


def test_expansion_rejects_near_duplicates_of_the_pool_and_of_each_other(tmp_path):
    pool = [Example(id=f"p{i}", instruction=t, output="a", task="Math") for i, t in enumerate(POOL)]
    hard = [Example(id="h0", instruction="Compute 3 + 4 * 2.", output="11", task="Math", meta={"hard": True})]
    with FakeOpenAIServer(responder=expander) as srv:
        cfg = oracle_cfg(srv.base_url, tmp_path / "c.sqlite")
        cfg.roles.expander.max_tokens = 256  # room for the whole list
        oracle = build_oracle(cfg, tmp_path)
        try:
            new, counts = expand.expand_hard_seeds(hard, pool, oracle, ratios=None, total=5, threshold=0.7,
                                                   max_attempts_factor=1)
        finally:
            oracle.close()
    assert [ex.instruction for ex in new] == [CANDIDATES[2], CANDIDATES[4]]
    assert counts["rejected_duplicate"] == 3


# ---------------------------------------------------------------------------- judge defaults and plan counts


@pytest.mark.parametrize("oracle,fmt,compare,delta", [("openai", "pair", "ge", 1.0), ("vllm", "pair", "ge", 1.0),
                                                       ("vllm_server", "pair", "ge", 1.0),
                                                       ("local", "single", "gt", 0.0)])
def test_judge_format_defaults_per_oracle(oracle, fmt, compare, delta, tmp_path, monkeypatch):
    monkeypatch.setenv("TAPIR_ROOT", str(tmp_path))
    m = _compose([f"oracle={oracle}"]).steps.mfd
    assert (m.format, m.compare, m.delta) == (fmt, compare, delta)


ALPACA_SIZE = 52_002  # records in alpaca_data.json


@pytest.fixture(scope="module")
def alpaca_sized(tmp_path_factory):
    path = tmp_path_factory.mktemp("alpaca") / "alpaca_data.json"
    path.write_text(json.dumps([{"instruction": f"Describe item number {i} in one sentence.", "input": "",
                                 "output": "It is an item."} for i in range(ALPACA_SIZE)]))
    return path


@pytest.mark.slow  # the plan is a dry run of the whole pipeline over 52K items (~35 s of CPU each)
@pytest.mark.parametrize("fmt,per_item", [("pair", 2), ("single", 4)])
def test_plan_counts_judge_requests_per_format(alpaca_sized, tmp_path, monkeypatch, fmt, per_item):
    """One round on a 52K pool: 104K judge requests in pair format, 208K in single format."""
    from tapir_exp.plan import estimate

    monkeypatch.setenv("TAPIR_ROOT", str(tmp_path))
    full = _compose(["oracle=openai", "data=alpaca_json", f"data.path={alpaca_sized}", "curriculum.rounds=1",
                     f"steps.mfd.format={fmt}", "eval.alpaca_eval.enabled=false", "eval.mt_bench.enabled=false"])
    plan = estimate(full, tmp_path / "run")
    rows = [r for r in plan["rows"] if r["role"] == "judge" and r["step"] == "mfd"]
    assert [r["requests"] for r in rows] == [ALPACA_SIZE * per_item]
    assert plan["assumptions"]["judge_format"] == fmt
