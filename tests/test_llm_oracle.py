"""The oracle client against a real HTTP server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tapir_exp.errors import BudgetExceeded
from tapir_exp.llm import build_oracle
from tapir_exp.testing.openai_server import FakeOpenAIServer
from tapir_exp.testing.oracle_config import oracle_cfg


def ask(oracle, n: int, prefix: str = "q", role: str = "teacher"):
    return [oracle.request(role, [{"role": "user", "content": f"{prefix} {i}"}], id=f"{prefix}/{i}") for i in range(n)]


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def test_answers_in_order_and_ledger_matches_server(server, tmp_path):
    o = build_oracle(oracle_cfg(server.base_url, tmp_path / "c.sqlite"), tmp_path)
    res = o.chat_many("teacher", ask(o, 12), step="teacher", rnd=0)
    o.close()
    assert [r.text for r in res] == [f"echo: q {i}" for i in range(12)]
    usage = json.loads((tmp_path / "oracle_usage.json").read_text())
    assert usage["total"]["requests"] == server.request_count == 12
    assert usage["by_role"]["teacher"]["completion_tokens"] == sum(r.completion_tokens for r in res) > 0
    # price table: 1 USD / 1M prompt tokens, 2 USD / 1M completion tokens
    expected = (usage["total"]["prompt_tokens"] + 2 * usage["total"]["completion_tokens"]) / 1e6
    assert usage["total"]["cost_usd"] == pytest.approx(expected)


@pytest.mark.parametrize("fault", ["500", "malformed", "empty_choices", "drop"])
def test_transient_faults_are_retried(server, tmp_path, fault):
    o = build_oracle(oracle_cfg(server.base_url, tmp_path / "c.sqlite"), tmp_path)
    server.inject(fault, times=2)
    res = o.chat_many("teacher", ask(o, 1), step="s", rnd=0)
    o.close()
    assert res[0].ok and res[0].text == "echo: q 0"
    assert res[0].attempts == 3 and server.request_count == 3
    assert server.faults_served == [fault, fault]
    assert o.usage.summary()["total"]["retries"] == 2


def test_429_honours_retry_after(server, tmp_path):
    o = build_oracle(oracle_cfg(server.base_url, tmp_path / "c.sqlite"), tmp_path)
    server.inject("429", times=1, retry_after=0.4)
    res = o.chat_many("teacher", ask(o, 1), step="s", rnd=0)
    o.close()
    assert res[0].ok
    # our own backoff is at most 0.05 s here; the gap can only come from the server's Retry-After
    assert server.arrivals[1] - server.arrivals[0] >= 0.4


def test_hang_past_timeout_is_retried(tmp_path):
    with FakeOpenAIServer() as srv:
        o = build_oracle(oracle_cfg(srv.base_url, tmp_path / "c.sqlite", timeout_s=0.5), tmp_path)
        srv.inject("hang", times=1, hang_s=3)
        res = o.chat_many("teacher", ask(o, 1), step="s", rnd=0)
        o.close()
    assert res[0].ok and res[0].attempts == 2


def test_truncated_output_is_kept_and_counted(server, tmp_path):
    o = build_oracle(oracle_cfg(server.base_url, tmp_path / "c.sqlite"), tmp_path)
    server.inject("truncated", times=1)
    res = o.chat_many("teacher", [o.request("teacher", [{"role": "user", "content": "one two three four"}])],
                      step="s", rnd=0)
    o.close()
    assert res[0].finish_reason == "length" and res[0].ok
    assert o.usage.summary()["total"]["truncated"] == 1


def test_failures_are_recorded_never_dropped_and_budget_raises(tmp_path):
    broken = {"q 0"}  # this item's requests always fail

    def fault_when(body):
        return "500" if body["messages"][-1]["content"] in broken else None

    server = FakeOpenAIServer(fault_when=fault_when).start()
    o = build_oracle(oracle_cfg(server.base_url, tmp_path / "c.sqlite", max_retries=1), tmp_path)
    res = o.chat_many("teacher", ask(o, 4), step="teacher", rnd=1, failure_budget=0.5)
    assert len(res) == 4 and sum(not r.ok for r in res) == 1
    failures = [json.loads(x) for x in (tmp_path / "oracle_failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1 and failures[0]["role"] == "teacher" and failures[0]["round"] == 1
    assert "500" in failures[0]["error"] and failures[0]["attempts"] == 2
    broken.update({"fresh 0", "fresh 1"})
    with pytest.raises(BudgetExceeded):
        o.chat_many("teacher", ask(o, 3, "fresh"), step="teacher", rnd=1, failure_budget=0.5)
    # what succeeded before the budget tripped is cached: a re-run asks only for the failed ones again
    broken.clear()
    sent = server.request_count
    res = o.chat_many("teacher", ask(o, 3, "fresh"), step="teacher", rnd=1)
    assert all(r.ok for r in res) and server.request_count == sent + 2
    o.close()
    server.stop()


def test_permanent_error_is_not_retried(tmp_path):
    with FakeOpenAIServer() as srv:
        cfg = oracle_cfg(srv.base_url.replace("/v1", "/nowhere"), tmp_path / "c.sqlite")
        o = build_oracle(cfg, tmp_path)
        res = o.chat_many("teacher", ask(o, 1), step="s", rnd=0)
        o.close()
        assert not res[0].ok and "NotFound" in res[0].error and srv.request_count == 1


def test_cache_across_oracles_and_identical_prompts_sent_once(server, tmp_path):
    cache = tmp_path / "shared.sqlite"
    o = build_oracle(oracle_cfg(server.base_url, cache), tmp_path / "a")
    reqs = ask(o, 5) + ask(o, 5)  # the same five prompts twice
    o.chat_many("teacher", reqs, step="s", rnd=0)
    o.close()
    assert server.request_count == 5
    o2 = build_oracle(oracle_cfg(server.base_url, cache), tmp_path / "b")
    res = o2.chat_many("teacher", ask(o2, 6), step="s", rnd=0)
    o2.close()
    assert server.request_count == 6 and sum(r.cached for r in res) == 5
    assert o2.usage.summary()["total"]["cache_hits"] == 5


def test_request_rate_limit_spaces_requests(server, tmp_path):
    o = build_oracle(oracle_cfg(server.base_url, tmp_path / "c.sqlite", requests_per_minute=300), tmp_path)
    # one request first, so the measured ones do not include building the client and its first connection
    o.chat_many("teacher", ask(o, 1, prefix="warm"), step="s", rnd=0)
    o.chat_many("teacher", ask(o, 6), step="s", rnd=0)
    o.close()
    arrivals = server.arrivals[1:]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    # 300/min = one request per 0.2 s: the limiter spaces the sends; an arrival can be a few tens of ms late
    # (the client's own send path on a busy CPU), so gaps and the span of five get a little slack
    assert len(gaps) == 5 and min(gaps) >= 0.15 and arrivals[-1] - arrivals[0] >= 0.95  # no limit: ~5 ms gaps


def test_parser_reasks_with_new_seed(tmp_path):
    def responder(body):
        return "no number here" if (body.get("seed") or 0) == 0 else "[[7]]"

    with FakeOpenAIServer(responder=responder) as srv:
        o = build_oracle(oracle_cfg(srv.base_url, tmp_path / "c.sqlite"), tmp_path)
        from tapir_exp.prompts.parsers import parse_rating

        res = o.chat_many("judge", ask(o, 2, role="judge"), step="s", rnd=0, parser=parse_rating)
        o.close()
    assert [r.meta["parsed"] for r in res] == [7.0, 7.0]
    assert srv.request_count == 4 and {b["seed"] for b in srv.requests} == {0, 7919}


def test_parse_failure_counted_after_retries(tmp_path):
    with FakeOpenAIServer(responder=lambda b: "never parses") as srv:
        o = build_oracle(oracle_cfg(srv.base_url, tmp_path / "c.sqlite"), tmp_path)
        from tapir_exp.prompts.parsers import parse_rating

        res = o.chat_many("judge", ask(o, 1, role="judge"), step="s", rnd=0, parser=parse_rating)
        o.close()
    assert "parse_error" in res[0].meta and "parsed" not in res[0].meta
    assert srv.request_count == 3 and o.usage.summary()["total"]["parse_failures"] == 1


def test_logprob_rating_is_expected_value_over_rating_tokens(tmp_path):
    top = {"7": math.log(0.5), "8": math.log(0.3), "6": math.log(0.1), "x": math.log(0.1)}

    with FakeOpenAIServer(responder=lambda b: {"text": "[[7]]", "top_logprobs": [{"[[": 0.0}, top]}) as srv:
        o = build_oracle(oracle_cfg(srv.base_url, tmp_path / "c.sqlite"), tmp_path)
        logp = o.rating_many("judge", ask(o, 1, role="judge"), step="s", rnd=0)
        gen = o.rating_many("judge", ask(o, 1, role="judge"), step="s", rnd=0, scoring="generative")
        o.close()
    assert logp[0].method == "logprob"
    assert logp[0].value == pytest.approx((7 * 0.5 + 8 * 0.3 + 6 * 0.1) / 0.9)
    assert gen[0].method == "generative" and gen[0].value == 7.0
    assert srv.requests[0]["logprobs"] is True and srv.requests[0]["top_logprobs"] == 20


def test_logprob_rating_falls_back_to_text_without_logprobs(tmp_path):
    with FakeOpenAIServer(responder=lambda b: "Rating: [[4]]", logprobs=False) as srv:
        o = build_oracle(oracle_cfg(srv.base_url, tmp_path / "c.sqlite"), tmp_path)
        res = o.rating_many("judge", ask(o, 1, role="judge"), step="s", rnd=0)
        o.close()
    assert res[0].value == 4.0 and res[0].method == "generative-fallback"


CHILD = """
import sys
from tapir_exp.testing.oracle_config import oracle_cfg
from tapir_exp.llm import build_oracle
o = build_oracle(oracle_cfg(sys.argv[1], sys.argv[2], concurrency=2), sys.argv[3])
reqs = [o.request("teacher", [{"role": "user", "content": f"item {i}"}], id=str(i)) for i in range(40)]
o.chat_many("teacher", reqs, step="s", rnd=0)
print("done", flush=True)
"""


def test_killed_process_resumes_without_paying_twice(tmp_path):
    """kill -9 mid-batch, restart: only requests in flight at the kill may be sent again."""
    with FakeOpenAIServer(latency_s=0.05) as srv:
        args = [sys.executable, "-c", CHILD, srv.base_url, str(tmp_path / "c.sqlite"), str(tmp_path / "run")]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE)
        while srv.request_count < 15:
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        at_kill = srv.request_count
        rerun = subprocess.run(args, env=env, capture_output=True, text=True)
        assert rerun.returncode == 0 and "done" in rerun.stdout
        bodies = [b["messages"][0]["content"] for b in srv.requests]
        assert set(bodies) == {f"item {i}" for i in range(40)}
        repeats = len(bodies) - 40
        # at most the requests in flight at the kill (concurrency 2, plus one in the connection queue)
        assert repeats <= 3, (at_kill, repeats)
