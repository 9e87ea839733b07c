"""Evaluation: metrics equal alpaca_eval's on the same annotations; a round's evaluation against a real
HTTP judge writes the official export formats."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tapir_exp.eval.metrics import length_controlled_win_rate, win_rate
from tapir_exp.eval.runner import evaluate_round
from tapir_exp.llm import build_oracle
from tapir_exp.student.generate import HFGenerator
from tapir_exp.student.models import TinyLlamaInit
from tapir_exp.testing.openai_server import FakeOpenAIServer
from tests.support_llm import oracle_cfg
from tests.support_pipeline import responder

REPO = Path(__file__).resolve().parents[1]


def annotations(n=60, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        m, b = rng.randint(20, 400), rng.randint(20, 400)
        # longer model answers win more often: a length bias the LC rate should remove
        p = min(2.0, max(1.0, 1.5 + (m - b) / 800 + rng.uniform(-0.3, 0.3)))
        out.append({"preference": round(p, 3), "model_len": m, "base_len": b, "index": i})
    return out


def test_win_rate_and_standard_error_match_alpaca_eval():
    import alpaca_eval.metrics as ae  # installed by scripts/setup.sh (see there)
    ann = annotations()
    ours = win_rate([a["preference"] for a in ann])
    theirs = ae.get_winrate([{"preference": a["preference"]} for a in ann])
    assert ours[0] == pytest.approx(theirs["win_rate"]) and ours[1] == pytest.approx(theirs["standard_error"])


def test_lc_win_rate_matches_alpaca_eval_glm_fit():
    """Same annotations, alpaca_eval's own design matrix (patsy formula of its 'minimal' GLM) and its own
    fitting routine (fixed C branch): the same LC win rate."""
    import alpaca_eval.metrics.glm_winrate as g
    import pandas as pd
    ann = annotations()
    df = pd.DataFrame({"preference": [a["preference"] - 1 for a in ann]})
    delta = pd.Series([a["base_len"] - a["model_len"] for a in ann], dtype=float)
    df["std_delta_len"] = delta / delta.std()
    df["not_gamed_baseline"] = True
    test = df[["not_gamed_baseline"]].copy()
    test["std_delta_len"] = 0
    xy, x_test = g.make_dmatrix_for_model(df, test, formula=g.GLM_INFO["length_controlled_minimal"]["formula"])
    model = g.fit_LogisticRegressionCV(xy, "preference", is_ytrue_proba=True, n_splits=0)
    theirs = model.predict_proba(x_test)[:, 1].mean() * 100
    ours = length_controlled_win_rate([a["preference"] for a in ann], [a["model_len"] for a in ann],
                                      [a["base_len"] for a in ann])
    assert ours == pytest.approx(theirs, abs=1e-6)
    raw = win_rate([a["preference"] for a in ann])[0]
    assert ours != pytest.approx(raw)  # the length correction does something on biased data


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    d = tmp_path_factory.mktemp("student")
    TinyLlamaInit(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, seed=0)(d, corpus=["a short corpus for a tiny tokenizer"] * 4)
    return d


def test_round_evaluation_over_http_writes_official_formats(tiny_student, tmp_path):
    cfg = OmegaConf.create({"eval": {
        "alpaca_eval": {"enabled": True, "path": str(REPO / "tapir_exp/resources/demo/alpaca_eval.json"),
                        "max_items": 5, "both_orders": True},
        "mt_bench": {"enabled": True, "path": str(REPO / "tapir_exp/resources/demo/mt_bench_questions.jsonl"),
                     "max_questions": 3}}})
    with FakeOpenAIServer(responder=responder) as srv:
        oracle = build_oracle(oracle_cfg(srv.base_url, tmp_path / "c.sqlite"), tmp_path)
        m = evaluate_round(cfg, tiny_student, oracle, HFGenerator(max_new_tokens=6), tmp_path / "eval", 1, "tiny/r1")
        oracle.close()
        pairwise = [b for b in srv.requests if "Which response is better?" in b["messages"][-1]["content"]]
    assert len(pairwise) == 10  # 5 items x both orders
    # the fake judge prefers the longer response (the reference here) with p=0.6 in both orders
    assert m["alpaca_eval/win_rate"] == pytest.approx(40.0) and m["alpaca_eval/n_judged"] == 5
    assert m["mt_bench/n_judged"] == 6 and m["mt_bench/score"] == pytest.approx(5.0, abs=0.5)
    outputs = json.loads((tmp_path / "eval/model_outputs.json").read_text())
    assert set(outputs[0]) == {"instruction", "output", "generator", "dataset"} and outputs[0]["generator"] == "tiny/r1"
    answers = [json.loads(x) for x in (tmp_path / "eval/mt_bench_answers.jsonl").read_text().splitlines()]
    assert {"question_id", "answer_id", "model_id", "choices", "tstamp"} <= set(answers[0])
    assert len(answers[0]["choices"][0]["turns"]) == 2
