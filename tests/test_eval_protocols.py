"""The official evaluation protocols, checked against the reference implementations installed here:

- AlpacaEval: alpaca_eval's own PairwiseAnnotator talking to the fake OpenAI server through its own openai
  decoder, side by side with our run (its annotator, completions routed through our oracle client): the same
  requests reach the server and the same preferences come back.
- MT-Bench: FastChat's own match building and judging (``gen_judgment.make_match_single``,
  ``common.play_a_match_single`` with a recording stand-in for its API call) on FastChat-format files written
  for these tests (tests/data/fastchat), side by side with our grading over HTTP.
- The protocol metadata every result carries, and ``tapir-eval`` on answers files and a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tapir_exp.errors import ConfigError, DataError
from tapir_exp.eval.annotators import AlpacaEvalAnnotator, build_annotator
from tapir_exp.eval.mt_judge import REFERENCE_CATEGORIES, fastchat_rating
from tapir_exp.eval.runner import alpaca_eval, evaluate_round, item_limit, mt_bench
from tapir_exp.llm import build_oracle
from tapir_exp.testing.openai_server import FakeOpenAIServer
from tapir_exp.testing.oracle_config import oracle_cfg
from tests.support_pipeline import tapir_env

REPO = Path(__file__).resolve().parents[1]
FASTCHAT_DATA = REPO / "tests/data/fastchat"
WEIGHTED = "weighted_alpaca_eval_gpt4_turbo"


def _u(messages: list[dict]) -> float:
    """A number in [0, 1) fixed by the request's messages (the same prompt always gets the same reply)."""
    return int(hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:8], 16) / 2**32


JUDGMENTS = ["Clear and correct. Score: [[7]]", "Mostly right [8]", "I cannot grade this.", "Score: [[6.5]]",
             "Excellent. [[10]]", "Weak answer. Rating: [[2]] (not [[9]])"]


def judge_responder(body: dict) -> str | dict:
    """alpaca_eval's leaderboard prompt: one token "m"/"M" with log-probabilities (sometimes neither among
    the top tokens, which alpaca_eval scores as no annotation); anything else: a FastChat-style judgment."""
    u = _u(body["messages"])
    if "Your verdict:" in body["messages"][-1]["content"]:  # own_annotator_config's prompt
        return ["[[A]]", "[[B]]", "Verdict [[B]]", "neither"][int(u * 4)]
    if "## Best Model Identifier" in body["messages"][-1]["content"]:
        if u < 0.15:
            return {"text": "The", "top_logprobs": [{"The": -0.2, "Both": -1.9}]}
        p = 0.05 + 0.9 * u
        return {"text": "m" if p > 0.5 else "M",
                "top_logprobs": [{"m": math.log(p), "M": math.log(1 - p), "Model": -7.5, "The": -9.0}]}
    return JUDGMENTS[int(u * len(JUDGMENTS))]


def triples(n: int = 8) -> tuple[list[dict], list[dict]]:
    """(instruction, reference output, model output); item 3's two outputs are identical (alpaca_eval: a draw,
    no request)."""
    ref = [{"instruction": f"Describe item {i} of the list in a sentence.", "output": f"Item {i} is a red box.",
            "generator": "gpt4_turbo", "dataset": "helpful_base"} for i in range(n)]
    model = [{"instruction": r["instruction"], "output": r["output"] if i == 3 else f"Item {i}: " + "a box. " * (i + 1),
              "generator": "student", "dataset": "helpful_base"} for i, r in enumerate(ref)]
    return ref, model


def oracle_for(srv: FakeOpenAIServer, tmp: Path, model: str = "gpt-4-1106-preview"):
    cfg = oracle_cfg(srv.base_url, tmp / "cache.sqlite")
    cfg.backends.openai.model = model
    return build_oracle(cfg, tmp)


SENT = ("model", "messages", "max_tokens", "temperature", "top_p", "logprobs", "top_logprobs")


def _sent(requests: list[dict]) -> list[str]:
    return sorted(json.dumps({k: r.get(k) for k in SENT}, sort_keys=True) for r in requests)


def own_annotator_config(tmp: Path) -> Path:
    """An annotator config in alpaca_eval's layout, given by path: a ChatML prompt, a regex parser, and no
    sampling parameters but the model (so alpaca_eval's decoder defaults apply)."""
    d = tmp / "verdict_annotator"
    d.mkdir()
    (d / "prompt.txt").write_text("<|im_start|>system\nYou pick the better of two answers.\n<|im_end|>\n<|im_start|>user\n"
                                  "Task: {instruction}\n\nAnswer A: {output_1}\n\nAnswer B: {output_2}\n\n"
                                  "Reply [[A]] or [[B]]. Your verdict:\n<|im_end|>")
    (d / "configs.yaml").write_text(
        "verdict_annotator:\n  prompt_template: verdict_annotator/prompt.txt\n  fn_completions: openai_completions\n"
        "  completions_kwargs:\n    model_name: gpt-4-1106-preview\n  fn_completion_parser: regex_parser\n"
        "  completion_parser_kwargs:\n    outputs_to_match:\n      1: '\\[\\[A\\]\\]'\n      2: '\\[\\[B\\]\\]'\n"
        "  batch_size: 1\n")
    return d / "configs.yaml"


@pytest.mark.parametrize("which", ["shipped", "path"])
def test_alpaca_eval_annotator_sends_alpaca_eval_prompts_and_gets_its_preferences(which, tmp_path, monkeypatch):
    """Same triples: alpaca_eval's own annotator (its openai decoder over HTTP) and ours (its annotator, our
    oracle client) send the same requests (prompt, order randomisation, sampling) and get the same
    preferences — from the same log-probabilities (the leaderboard's weighted annotator) or the same text (a
    config given by path); our requests go through the oracle's cache and ledger."""
    from alpaca_eval.annotators import PairwiseAnnotator

    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    name = WEIGHTED if which == "shipped" else str(own_annotator_config(tmp_path))
    ref, model = triples()
    with FakeOpenAIServer(responder=judge_responder) as srv:
        theirs = PairwiseAnnotator(annotators_config=name, caching_path=None).annotate_head2head(
            outputs_1=ref, outputs_2=model, openai_api_base=srv.base_url, openai_api_keys=["test-key"], num_procs=1)
        their_requests = list(srv.requests)
        srv.requests.clear()
        oracle = oracle_for(srv, tmp_path)
        ours = AlpacaEvalAnnotator(name).annotate(ref, model, oracle, rnd=1)
        our_requests = list(srv.requests)
        again = AlpacaEvalAnnotator(name).annotate(ref, model, oracle, rnd=1)  # answered from the cache
        oracle.close()
    assert len(their_requests) == 7 and _sent(our_requests) == _sent(their_requests)  # item 3 is a draw: no request
    # alpaca_eval's order randomisation put the model's output first in some prompts, second in others
    second = '"M"' if which == "shipped" else "Answer B:"
    assert any("a box." in r["messages"][-1]["content"].split(second)[0] for r in our_requests)
    assert any("a box." in r["messages"][-1]["content"].split(second)[1] for r in our_requests)
    theirs_by = {r["instruction"]: r["preference"] for r in theirs}
    expected = [None if theirs_by[r["instruction"]] is None or math.isnan(theirs_by[r["instruction"]])
                else theirs_by[r["instruction"]] for r in ref]
    assert ours.preferences == pytest.approx(expected, abs=1e-12)
    assert ours.preferences[3] == 1.5 and None in ours.preferences  # the draw; a reply it cannot parse
    if which == "shipped":
        assert len({p for p in ours.preferences if p is not None}) >= 5  # weighted, not binarised
    else:
        assert {p for p in ours.preferences if p is not None} == {1.0, 1.5, 2.0}
        assert {(r["temperature"], r["max_tokens"], r["top_p"]) for r in our_requests} == {(0.7, 2048, 1.0)}
    assert again.preferences == ours.preferences and len(srv.requests) == len(our_requests)
    usage = json.loads((tmp_path / "oracle_usage.json").read_text())
    assert '"eval_alpaca"' in json.dumps(usage)
    assert ours.protocol["annotator"] == Path(name).parent.name if which == "path" else WEIGHTED
    assert ours.protocol["annotator_model"] == "gpt-4-1106-preview"
    assert len(ours.protocol["annotator_hash"]) == 12
    assert {"output_1", "output_2", "preference", "annotator"} <= set(ours.records[0])  # alpaca_eval's annotations


def test_alpaca_eval_annotator_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="neither tapir_pairwise, a configs.yaml path, nor an annotator"):
        build_annotator(OmegaConf.create({"annotator": "no_such_annotator"}))
    bad = tmp_path / "mine" / "configs.yaml"
    bad.parent.mkdir()
    bad.write_text("mine:\n  prompt_template: p.txt\n  completions_kwargs: {model_name: x, tokens_to_avoid: [a]}\n")
    with pytest.raises(ConfigError, match="uses completions_kwargs 'tokens_to_avoid', which the oracle client cannot send"):
        build_annotator(OmegaConf.create({"annotator": str(bad.parent)}))
    with FakeOpenAIServer(responder=judge_responder, logprobs=False) as srv:
        cfg = oracle_cfg(srv.base_url, tmp_path / "c.sqlite")
        cfg.backends.openai.logprobs = False
        oracle = build_oracle(cfg, tmp_path)
        with pytest.raises(ConfigError, match="reads the judge's log-probabilities"):
            AlpacaEvalAnnotator(WEIGHTED).annotate(*triples(2), oracle, rnd=0)
        oracle.close()


def _questions() -> list[dict]:
    return [json.loads(x) for x in (FASTCHAT_DATA / "question.jsonl").read_text().splitlines()]


def fastchat_single(monkeypatch, judge_model: str = "gpt-4") -> dict[tuple[int, int], dict]:
    """FastChat's own single-answer grading of tests/data/fastchat: its loaders, its judges and matches
    (gen_judgment), its prompt construction and parsing (play_a_match_single); its API call replaced by a
    recorder that answers as the fake server does."""
    import fastchat.llm_judge.common as common
    from fastchat.llm_judge.gen_judgment import make_judge_single, make_match_single

    calls = []

    def api(model, conv, temperature, max_tokens, api_dict=None):
        messages = conv.to_openai_api_messages()
        calls.append({"messages": messages, "temperature": temperature, "max_tokens": max_tokens})
        return judge_responder({"messages": messages})

    monkeypatch.setattr(common, "chat_completion_openai", api)
    questions = common.load_questions(str(FASTCHAT_DATA / "question.jsonl"), None, None)
    answers = common.load_model_answers(str(FASTCHAT_DATA / "model_answer"))
    refs = common.load_model_answers(str(FASTCHAT_DATA / "reference_answer"))
    judges = make_judge_single(judge_model, common.load_judge_prompts(str(FASTCHAT_DATA / "judge_prompts.jsonl")))
    common.check_data(questions, answers, refs, ["student-x"], judges)
    math_q = [q for q in questions if q["category"] in common.NEED_REF_CATS]
    default_q = [q for q in questions if q["category"] not in common.NEED_REF_CATS]
    matches = (make_match_single(default_q, ["student-x"], answers, judges["default"])
               + make_match_single(math_q, ["student-x"], answers, judges["math"], ref_answers=refs)
               + make_match_single(default_q, ["student-x"], answers, judges["default-mt"], multi_turn=True)
               + make_match_single(math_q, ["student-x"], answers, judges["math-mt"], ref_answers=refs, multi_turn=True))
    out = {}
    for m in matches:
        res = common.play_a_match_single(m, output_file=None)
        out[(res["question_id"], res["turn"])] = {**res, **calls[-1]}
    return out


def mt_cfg(**extra) -> OmegaConf:
    return OmegaConf.create({"eval": {"mt_bench": {"enabled": True, "path": str(FASTCHAT_DATA / "question.jsonl"),
                                                   "max_questions": None, "demo_max_questions": 6, **extra}}})


def test_mt_bench_fastchat_judge_equals_fastchat(tmp_path, monkeypatch):
    """FastChat's judge prompts and reference answers: the messages we send, the sampling, the ratings and
    which (question, turn) pairs are graded are FastChat's; every question of the file is evaluated."""
    import fastchat.llm_judge.common as common

    assert tuple(common.NEED_REF_CATS) == REFERENCE_CATEGORIES
    theirs = fastchat_single(monkeypatch)
    cfg = mt_cfg(judge_prompts=str(FASTCHAT_DATA / "judge_prompts.jsonl"),
                 references=str(FASTCHAT_DATA / "reference_answer/gpt-4.jsonl"))
    with FakeOpenAIServer(responder=judge_responder) as srv:
        oracle = oracle_for(srv, tmp_path, model="gpt-4")
        m = mt_bench(cfg, None, oracle, None, tmp_path, 1, "student-x",
                     answers_file=FASTCHAT_DATA / "model_answer/student-x.jsonl")
        oracle.close()
    ours = {(j["question_id"], j["turn"]): j for j in map(json.loads, (tmp_path / "mt_bench_judgments.jsonl").open())}
    sent = {json.dumps(r["messages"]): r for r in srv.requests}
    assert set(ours) == set(theirs) and len(ours) == 16  # 9 questions: turn 2 of two-turn questions only
    for key, fc in theirs.items():
        req = sent[json.dumps(fc["messages"])]  # FastChat's exact messages reached the server
        assert (req["temperature"], req["max_tokens"]) == (fc["temperature"], fc["max_tokens"]) == (0, 2048)
        assert ours[key]["score"] == fc["score"], key
    assert {fc["score"] for fc in theirs.values()} >= {-1}  # an unparseable judgment is -1 for both
    assert any("=== Reference ===" in r["messages"][-1]["content"] for r in srv.requests)
    kept = [fc["score"] for fc in theirs.values() if fc["score"] != -1]  # FastChat's show_result drops -1
    assert m["mt_bench/score"] == pytest.approx(sum(kept) / len(kept), abs=1e-4)
    assert m["mt_bench/n_questions"] == 9 and m["mt_bench/n_judged"] == len(kept)
    assert m["mt_bench/protocol/judge_prompts"] == "fastchat" and m["mt_bench/protocol/judge_model"] == "gpt-4"
    assert m["mt_bench/protocol/leaderboard"].startswith("leaderboard protocol")
    for text in JUDGMENTS + ["[[07]]", "[3.5]", "[[ 4 ]]"]:
        assert fastchat_rating(text) == _their_rating(text), text


def _their_rating(text: str) -> float:
    import re

    import fastchat.llm_judge.common as common
    match = re.search(common.one_score_pattern, text) or re.search(common.one_score_pattern_backup, text)
    if not match:
        return -1
    try:
        import ast
        return ast.literal_eval(match.groups()[0])
    except SyntaxError:  # FastChat raises here; we score it -1
        return -1


def test_mt_bench_file_errors_and_caps(tmp_path):
    prompts = tmp_path / "judge_prompts.jsonl"
    prompts.write_text("\n".join(x for x in (FASTCHAT_DATA / "judge_prompts.jsonl").read_text().splitlines()
                                 if '"single-math-v1-multi-turn"' not in x) + "\n")
    from tapir_exp.eval.mt_judge import FastChatJudge
    with pytest.raises(DataError, match="no judge prompt named 'single-math-v1-multi-turn'"):
        FastChatJudge.load(prompts, None)
    judge = FastChatJudge.load(FASTCHAT_DATA / "judge_prompts.jsonl", None)
    with pytest.raises(DataError, match=r"question 203: field 'references': category 'math'"):
        judge.check(_questions(), "question.jsonl")
    with pytest.raises(ConfigError, match="eval.mt_bench.judge_prompts"):
        mt_bench(mt_cfg(references=str(FASTCHAT_DATA / "reference_answer/gpt-4.jsonl")), None, None, None,
                 tmp_path, 0, "x")
    # a question file of one's own is never cut; the embedded demo set is, unless told otherwise
    demo = OmegaConf.create({"path": str(REPO / "tapir_exp/resources/demo/mt_bench_questions.jsonl"),
                             "max_questions": None, "demo_max_questions": 6})
    assert item_limit(demo, "max_questions") == 6
    assert item_limit(mt_cfg().eval.mt_bench, "max_questions") is None
    demo.max_questions = 3
    assert item_limit(demo, "max_questions") == 3


def test_alpaca_eval_metadata_and_not_available_lc_error(tmp_path):
    """Every result names its protocol; ours and a judge other than the annotator's say they are not
    leaderboard numbers; the minimal LC formula reports no standard error."""
    ref, model = triples()
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    (tmp_path / "outputs.json").write_text(json.dumps(model[::-1]))  # matched by instruction, not position
    base = {"enabled": True, "path": str(tmp_path / "ref.json"), "max_items": None, "lc": {"cv_folds": 2}}
    with FakeOpenAIServer(responder=judge_responder) as srv:
        oracle = oracle_for(srv, tmp_path, model="small-local-judge")
        official = alpaca_eval(OmegaConf.create({"eval": {"alpaca_eval": {**base, "annotator": WEIGHTED}}}), None,
                               oracle, None, tmp_path / "a", 1, "student", model_outputs=tmp_path / "outputs.json")
        ours = alpaca_eval(OmegaConf.create({"eval": {"alpaca_eval": {**base, "annotator": "tapir_pairwise"}}}), None,
                           oracle, None, tmp_path / "b", 1, "student", model_outputs=tmp_path / "outputs.json")
        capped = alpaca_eval(OmegaConf.create({"eval": {"alpaca_eval": {**base, "max_items": 4}}}), None,
                             oracle, None, tmp_path / "d", 1, "student", model_outputs=tmp_path / "outputs.json")
        oracle.close()
    assert official["alpaca_eval/protocol/annotator"] == WEIGHTED
    assert official["alpaca_eval/protocol/judge_model"] == "small-local-judge"
    assert official["alpaca_eval/protocol/lc_formula"] == "minimal"
    assert "judge model small-local-judge is not the annotator's gpt-4-1106-preview" in \
        official["alpaca_eval/protocol/leaderboard"]
    assert official["alpaca_eval/n_items"] == 8 and "alpaca_eval/lc_win_rate" in official
    assert "alpaca_eval/lc_standard_error" not in official and "alpaca_eval/lc_standard_error" not in ours
    assert ours["alpaca_eval/protocol/annotator"] == "tapir_pairwise"
    assert ours["alpaca_eval/protocol/leaderboard"].startswith("not a leaderboard number: our own judge prompt")
    assert ours["alpaca_eval/protocol/annotator_hash"] != official["alpaca_eval/protocol/annotator_hash"]
    assert capped["alpaca_eval/n_items"] == 4 and "4 of the 8 items of ref.json" in capped["alpaca_eval/protocol/leaderboard"]
    written = json.loads((tmp_path / "a/model_outputs.json").read_text())
    assert [w["output"] for w in written] == [m["output"] for m in model]
    (tmp_path / "outputs.json").write_text(json.dumps(model[:5]))
    with pytest.raises(DataError, match="outputs.json: field 'instruction': no output for evaluation item 5"):
        alpaca_eval(OmegaConf.create({"eval": {"alpaca_eval": {**base, "annotator": WEIGHTED}}}), None, None, None,
                    tmp_path / "c", 1, "student", model_outputs=tmp_path / "outputs.json")


def test_report_and_round_table_show_the_protocol(tmp_path, capsys):
    from tapir_exp.report import main as report
    from tapir_exp.summary import RunSummary, print_round

    ev = {"alpaca_eval/win_rate": 41.0, "alpaca_eval/lc_win_rate": 43.5, "alpaca_eval/protocol/annotator": WEIGHTED,
          "alpaca_eval/protocol/annotator_hash": "0123456789ab", "alpaca_eval/protocol/judge_model": "gpt-4-1106-preview",
          "alpaca_eval/protocol/lc_formula": "minimal",
          "alpaca_eval/protocol/leaderboard": "not a leaderboard number: LC formula minimal, not length_controlled_v1",
          "mt_bench/score": 6.25, "mt_bench/protocol/judge_prompts": "tapir_mt_bench",
          "mt_bench/protocol/judge_prompts_hash": "ba9876543210", "mt_bench/protocol/judge_model": "fake-model",
          "mt_bench/protocol/leaderboard": "not a leaderboard number: our own judge prompt (tapir_mt_bench)"}
    run = tmp_path / "runs" / "r1"
    s = RunSummary(run)
    s.doc.update(name="exp", run_name="r1")
    s.update(0, eval=ev)
    s.save()
    print_round(s.round(0))
    table = capsys.readouterr().out
    assert "weighted_alpaca_eval_gpt4_turbo" in table and "n/a" in table and "not a leaderboard number" in table
    report([str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep/report.md").read_text()
    assert "weighted_alpaca_eval_gpt4_turbo (0123456789ab), judge gpt-4-1106-preview, LC minimal" in md
    assert "tapir_mt_bench (ba9876543210), judge fake-model" in md and "not a leaderboard number" in md
    assert "LC standard error: n/a" in md


@pytest.mark.slow
def test_tapir_eval_scores_answer_files_and_a_checkpoint(tmp_path):
    """`tapir-eval` (= tapir mode=eval): AlpacaEval with alpaca_eval's annotator on an existing
    model_outputs.json, MT-Bench with FastChat's judge on answers generated by an HF checkpoint."""
    from tapir_exp.student.models import TinyLlamaInit

    ckpt = tmp_path / "ckpt"
    TinyLlamaInit(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, seed=0)(ckpt, corpus=["a short corpus for a tiny tokenizer"] * 4)
    ref, model = triples(6)
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    (tmp_path / "model_outputs.json").write_text(json.dumps(model))
    with FakeOpenAIServer(responder=judge_responder, model="gpt-4") as srv:
        proc = subprocess.run(
            [sys.executable, "-c", "from tapir_exp.cli import eval_main; eval_main()", "oracle=openai",
             f"oracle.backends.openai.base_url={srv.base_url}", "oracle.backends.openai.model=gpt-4",
             "oracle.progress=false", "logger=none", f"eval.model={ckpt}", "generation.max_new_tokens=6",
             f"eval.alpaca_eval.path={tmp_path / 'ref.json'}", f"eval.model_outputs={tmp_path / 'model_outputs.json'}",
             f"eval.alpaca_eval.annotator={WEIGHTED}", "eval.alpaca_eval.lc.cv_folds=2",
             f"eval.mt_bench.path={FASTCHAT_DATA / 'question.jsonl'}",
             f"eval.mt_bench.judge_prompts={FASTCHAT_DATA / 'judge_prompts.jsonl'}",
             f"eval.mt_bench.references={FASTCHAT_DATA / 'reference_answer/gpt-4.jsonl'}"],
            cwd=tmp_path, env=tapir_env(tmp_path), capture_output=True, text=True, timeout=600)
        n_alpaca = sum("## Best Model Identifier" in r["messages"][-1]["content"] for r in srv.requests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith(("alpaca_eval/", "mt_bench/")))
    assert n_alpaca == 5 and out["alpaca_eval/n_items"] == "6"  # one draw (identical outputs) needs no request
    assert out["alpaca_eval/protocol/annotator"] == WEIGHTED and out["mt_bench/protocol/judge_prompts"] == "fastchat"
    assert out["mt_bench/n_questions"] == "9"  # the whole question file: no demo cap
    answers = [json.loads(x) for x in next(tmp_path.rglob("eval/mt_bench_answers.jsonl")).read_text().splitlines()]
    assert len(answers) == 9 and all(len(a["choices"][0]["turns"]) == len(q["turns"])
                                     for a, q in zip(answers, _questions(), strict=True))
    # a directory that is not a checkpoint: one line naming the key (a missing directory is refused earlier,
    # by the config check, with the same key)
    (tmp_path / "not_a_model").mkdir()
    bad = subprocess.run([sys.executable, "-m", "tapir_exp.cli", "mode=eval", "logger=none",
                          f"eval.model={tmp_path / 'not_a_model'}"], cwd=tmp_path, env=tapir_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "config 'eval.model'" in bad.stderr and "no config.json" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_round_evaluation_still_runs_with_a_model(tmp_path):
    """evaluate_round without a model or answers says what is missing."""
    cfg = OmegaConf.create({"eval": {"alpaca_eval": {"enabled": True}, "mt_bench": {"enabled": False}}})
    with pytest.raises(ConfigError, match="eval.model_outputs"):
        evaluate_round(cfg, None, None, None, tmp_path, 0, "x")


def test_mode_eval_scores_answer_files_without_a_model(tmp_path, monkeypatch):
    """mode=eval on the composed config with only answers files: alpaca_eval's model_outputs.json and FastChat's
    answer JSONL are scored as they are (no checkpoint needed, nothing generated)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tapir_exp.eval.standalone import evaluate_model
    from tapir_exp.tracking import NullTracker

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    ref, model = triples(6)
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    (tmp_path / "model_outputs.json").write_text(json.dumps(model))
    with FakeOpenAIServer(responder=judge_responder) as srv:
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("tapir", overrides=[
                "mode=eval", "oracle=openai", f"oracle.backends.openai.base_url={srv.base_url}",
                "oracle.backends.openai.model=gpt-4", "oracle.progress=false", f"paths.run_dir={tmp_path / 'run'}",
                f"eval.alpaca_eval.path={tmp_path / 'ref.json'}", f"eval.model_outputs={tmp_path / 'model_outputs.json'}",
                "eval.alpaca_eval.lc.cv_folds=2", f"eval.mt_bench.path={FASTCHAT_DATA / 'question.jsonl'}",
                f"eval.mt_bench_answers={FASTCHAT_DATA / 'model_answer/student-x.jsonl'}",
                f"eval.mt_bench.judge_prompts={FASTCHAT_DATA / 'judge_prompts.jsonl'}",
                f"eval.mt_bench.references={FASTCHAT_DATA / 'reference_answer/gpt-4.jsonl'}"])
        GlobalHydra.instance().clear()
        result = evaluate_model(cfg, tmp_path / "run", NullTracker())
    m = result["metrics"]
    assert m["alpaca_eval/n_items"] == 6 and m["mt_bench/n_questions"] == 9 and m["mt_bench/n_judged"] > 0
    assert m["alpaca_eval/protocol/annotator"] == "tapir_pairwise"  # the default: our prompt, and it says so
    assert m["alpaca_eval/protocol/leaderboard"].startswith("not a leaderboard number")
    assert m["mt_bench/protocol/leaderboard"].startswith("leaderboard protocol (FastChat single grading, gpt-4)")
    answers = [json.loads(x) for x in (tmp_path / "run/eval/mt_bench_answers.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in (FASTCHAT_DATA / "model_answer/student-x.jsonl").read_text().splitlines()]
    assert [a["choices"][0]["turns"] for a in answers] == [t["choices"][0]["turns"] for t in theirs]


def test_mode_eval_runs_the_skills_suite_as_the_pipeline_does(tmp_path, monkeypatch):
    """mode=eval and the per-round eval share one dispatch (tapir_exp.eval.suites): with only the skills suite on,
    the standalone eval scores a checkpoint on it and builds no judge (the OpenAI backend has no key here, so
    building it would fail)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tapir_exp.eval.standalone import evaluate_model
    from tapir_exp.student.models import TinyLlamaInit
    from tapir_exp.tracking import NullTracker

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    model = tmp_path / "model"
    TinyLlamaInit(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=256)(model, corpus=["Answer: 42", "What is 2 + 2?"])
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("tapir", overrides=[
            "mode=eval", "oracle=openai", f"paths.run_dir={tmp_path / 'run'}", f"eval.model={model}",
            "eval.alpaca_eval.enabled=false", "eval.mt_bench.enabled=false", "eval.skills.enabled=true",
            "+eval.skills.per_cell=1", "generation.max_new_tokens=4"])
    GlobalHydra.instance().clear()
    m = evaluate_model(cfg, tmp_path / "run", NullTracker())["metrics"]
    assert "skills/accuracy" in m and 0.0 <= m["skills/accuracy"] <= 1.0, sorted(m)
    assert not any(k.startswith(("alpaca_eval/", "mt_bench/")) for k in m)
