"""Evaluation: metrics equal alpaca_eval's on the same annotations; a round's evaluation against a real
HTTP judge writes the official export formats."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tapir_exp.errors import DataError
from tapir_exp.eval.metrics import GamedAnnotations, length_controlled_win_rate, win_rate
from tapir_exp.eval.runner import evaluate_round
from tapir_exp.llm import build_oracle
from tapir_exp.student.generate import HFGenerator
from tapir_exp.student.models import TinyLlamaInit
from tapir_exp.testing.openai_server import FakeOpenAIServer
from tapir_exp.testing.oracle_config import oracle_cfg
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


def gamed_csv(path, n, seed=1):
    """A file in the layout of alpaca_eval's df_gamed.csv (made up values): every instruction's difficulty,
    and two length-gamed baselines' annotations (first block: indices 0..n-1 in order, as in alpaca_eval's)."""
    rng = random.Random(seed)
    difficulty = [round(rng.gauss(0, 1), 4) for _ in range(n)]
    lines = ["model,index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline"]
    for model, shift in (("gamed_verbose", 1.5), ("gamed_concise", -1.5)):
        for i in range(n):
            d = round(rng.gauss(-shift, 0.5), 4)  # baseline minus model length, standardised
            p = min(1.0, max(0.0, 0.5 - 0.25 * math.tanh(d) - 0.1 * difficulty[i] + rng.uniform(-0.2, 0.2)))
            lines.append(f"{model},{i},{p:.4f},{d},{difficulty[i]},False")
    path.write_text("\n".join(lines) + "\n")
    return path


def alpaca_eval_lc(ann, gamed_file, glm_name, monkeypatch):
    """alpaca_eval's own get_length_controlled_winrate; its hub download returns our local file instead."""
    import alpaca_eval.metrics.glm_winrate as g
    import pandas as pd
    monkeypatch.setattr(g, "hf_hub_download", lambda **kw: str(gamed_file))
    df = pd.DataFrame({"preference": [a["preference"] for a in ann], "index": [a["index"] for a in ann],
                       "output_1": ["b" * a["base_len"] for a in ann], "output_2": ["m" * a["model_len"] for a in ann],
                       "generator_1": "reference", "generator_2": "student", "annotator": "judge"})
    return g.get_length_controlled_winrate(df, glm_name=glm_name, save_weights_dir=None, is_warn_extreme_changes=False)


@pytest.mark.parametrize("glm", ["minimal", "v1"])
def test_lc_win_rate_equals_alpaca_eval(glm, tmp_path, monkeypatch):
    """Same annotations, alpaca_eval's own function (5-fold CV over C; v1 with difficulty and the gamed
    baselines' regularisation): the same LC win rate and LC standard error."""
    ann = annotations()
    gamed_file = gamed_csv(tmp_path / "df_gamed.csv", len(ann))
    theirs = alpaca_eval_lc(ann, gamed_file, {"minimal": "length_controlled_minimal", "v1": "length_controlled_v1"}[glm],
                            monkeypatch)
    ours = length_controlled_win_rate([a["preference"] for a in ann], [a["model_len"] for a in ann],
                                      [a["base_len"] for a in ann], indices=[a["index"] for a in ann],
                                      gamed=GamedAnnotations.load(gamed_file) if glm == "v1" else None)
    assert ours.glm == glm
    assert ours.win_rate == pytest.approx(theirs["length_controlled_winrate"], abs=1e-6)
    if glm == "v1":
        assert ours.standard_error == pytest.approx(theirs["lc_standard_error"], abs=1e-6)
    else:  # every item has the same prediction: alpaca_eval's ~1e-16 is no standard error, ours says so
        assert abs(theirs["lc_standard_error"]) < 1e-9 and ours.standard_error is None
    raw = win_rate([a["preference"] for a in ann])[0]
    assert ours.win_rate != pytest.approx(raw, abs=0.5)  # the length correction does something on biased data


def test_lc_v1_differs_from_minimal_and_needs_known_instructions(tmp_path):
    ann = annotations()
    gamed = GamedAnnotations.load(gamed_csv(tmp_path / "df_gamed.csv", len(ann)))
    args = ([a["preference"] for a in ann], [a["model_len"] for a in ann], [a["base_len"] for a in ann])
    assert length_controlled_win_rate(*args, gamed=gamed).win_rate != \
        pytest.approx(length_controlled_win_rate(*args).win_rate, abs=1e-3)
    with pytest.raises(ValueError, match="instruction 60 has no difficulty"):
        length_controlled_win_rate(*args, gamed=gamed, indices=range(1, 61))


def test_lc_win_rate_of_all_wins_or_all_losses_is_the_raw_rate():
    """Nothing to regress when one class has no weight: the LC rate is the raw one, not the fit's 50 % prior."""
    lengths = (list(range(10, 20)), [15] * 10)
    assert length_controlled_win_rate([2.0] * 10, *lengths).win_rate == pytest.approx(100.0)
    assert length_controlled_win_rate([1.0] * 10, *lengths).win_rate == pytest.approx(0.0)
    assert length_controlled_win_rate([1.5] * 10, *lengths).win_rate == pytest.approx(50.0)


def test_gamed_annotations_file_errors_name_line_and_field(tmp_path):
    bad = tmp_path / "df_gamed.csv"
    bad.write_text("model,index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline\n"
                   "m,0,0.5,0.1,0.2,False\nm,1,0.5,abc,0.2,False\n")
    with pytest.raises(DataError, match=r"df_gamed.csv:line 3: field 'std_delta_len': expected a number"):
        GamedAnnotations.load(bad)
    bad.write_text("model,index,preference\nm,0,0.5\n")
    with pytest.raises(DataError, match=r"line 1: field 'std_delta_len'"):
        GamedAnnotations.load(bad)


def test_tapir_winrate_scores_an_alpaca_eval_annotations_file_as_alpaca_eval(tmp_path, monkeypatch, capsys):
    """The published-annotations check: an alpaca_eval annotations.json (draws as 0, one unjudged) scored by
    `tapir-winrate --gamed` gives alpaca_eval's own win rate and v1 LC win rate."""
    import alpaca_eval.metrics as ae

    from tapir_exp.cli import winrate_main
    ann = annotations()
    ann[3]["preference"], ann[7]["preference"] = 0, None
    records = [{"instruction": f"task {a['index']}", "output_1": "b" * a["base_len"], "output_2": "m" * a["model_len"],
                "generator_1": "reference", "generator_2": "student", "annotator": "judge",
                "preference": a["preference"]} for a in ann]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(records))
    gamed_file = gamed_csv(tmp_path / "df_gamed.csv", len(ann))
    winrate_main([str(path), "--gamed", str(gamed_file)])
    ours = json.loads(capsys.readouterr().out)
    theirs_wr = ae.get_winrate([{"preference": r["preference"]} for r in records])
    theirs_lc = alpaca_eval_lc(ann, gamed_file, "length_controlled_v1", monkeypatch)
    assert ours["win_rate"] == pytest.approx(theirs_wr["win_rate"]) and ours["n_judged"] == 59 and ours["glm"] == "v1"
    assert ours["standard_error"] == pytest.approx(theirs_wr["standard_error"])
    assert ours["length_controlled_winrate"] == pytest.approx(theirs_lc["length_controlled_winrate"], abs=1e-6)
    assert ours["lc_standard_error"] == pytest.approx(theirs_lc["lc_standard_error"], abs=1e-6)
    path.write_text(json.dumps([{**records[0], "preference": 7}]))
    with pytest.raises(SystemExit) as exit_:
        winrate_main([str(path)])
    assert exit_.value.code == 2
    assert "annotations.json:record 0: field 'preference': expected a number in [1, 2]" in capsys.readouterr().err


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
    # the official tools' loaders read the exports (installed by scripts/setup.sh)
    from alpaca_eval.utils import load_or_convert_to_dataframe
    from fastchat.llm_judge.common import check_data, load_model_answers, load_questions
    df = load_or_convert_to_dataframe(tmp_path / "eval/model_outputs.json")
    reference = json.loads((REPO / "tapir_exp/resources/demo/alpaca_eval.json").read_text())[:5]
    assert list(df["instruction"]) == [r["instruction"] for r in reference] and df["output"].map(type).eq(str).all()
    answer_dir = tmp_path / "model_answer"  # FastChat's layout: <answer dir>/<model>.jsonl
    answer_dir.mkdir()
    (answer_dir / "tiny-r1.jsonl").write_text((tmp_path / "eval/mt_bench_answers.jsonl").read_text())
    questions = load_questions(str(REPO / "tapir_exp/resources/demo/mt_bench_questions.jsonl"), 0, 3)
    loaded = load_model_answers(str(answer_dir))
    check_data(questions, loaded, {}, ["tiny-r1"], {})  # asserts an answer per question
    assert [loaded["tiny-r1"][q["question_id"]]["choices"][0]["turns"] for q in questions] == \
        [a["choices"][0]["turns"] for a in answers]
