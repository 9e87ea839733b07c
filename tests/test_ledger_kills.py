"""The usage ledger survives SIGKILL: each answer's usage is committed with its cache entry, so a run killed
again and again counts every request the server answered except those in flight at each kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tapir_exp.testing.openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = 4
N = 160

CHILD = """
import sys
sys.path.insert(0, {repo!r})
from tapir_exp.llm import build_oracle
from tapir_exp.testing.oracle_config import oracle_cfg
o = build_oracle(oracle_cfg(sys.argv[1], {cache!r}, concurrency={conc}, max_retries=6), {run_dir!r})
reqs = [o.request("teacher", [{{"role": "user", "content": f"q {{i}}"}}], id=str(i)) for i in range({n})]
o.chat_many("teacher", reqs, step="teacher", rnd=0)
o.close()
print("done", flush=True)
"""


@pytest.mark.slow
def test_ledger_counts_every_answered_request_across_sigkills(tmp_path):
    code = CHILD.format(repo=str(REPO), cache=str(tmp_path / "cache.sqlite"), run_dir=str(tmp_path / "run"),
                        conc=CONCURRENCY, n=N)
    kills = 0
    # 10 % of the first requests fail once (retried: a failed attempt is a request the server counted too)
    with FakeOpenAIServer(latency_s=0.02) as srv:
        for _ in range(12):
            srv.inject("500", times=1)
        for target in (20, 55, 90, 125):  # kill when the server has answered this many, mid-batch
            proc = subprocess.Popen([sys.executable, "-c", code, srv.base_url], stdout=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
            while srv.request_count < target and proc.poll() is None:
                time.sleep(0.005)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        last = subprocess.run([sys.executable, "-c", code, srv.base_url], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
        assert last.returncode == 0 and "done" in last.stdout, last.stderr[-2000:]
        served = srv.request_count
    usage = json.loads((tmp_path / "run" / "oracle_usage.json").read_text())["total"]
    assert served >= N + 12
    # everything the server answered is in the ledger but the requests in flight at each kill
    assert served - CONCURRENCY * kills <= usage["requests"] <= served, (usage, served)
    assert usage["retries"] >= 12 - CONCURRENCY * kills and usage["cost_usd"] > 0
    assert usage["cache_hits"] >= 125 - CONCURRENCY * kills  # the last run found the earlier answers cached


@pytest.mark.parametrize("cache", [True, False])
def test_ledger_reopens_with_the_run_directory(tmp_path, cache):
    """A resumed run keeps counting into the same ledger (cache file or, without a cache, its own file);
    a new run directory starts from zero."""
    from tapir_exp.llm import build_oracle
    from tapir_exp.testing.oracle_config import oracle_cfg

    with FakeOpenAIServer() as srv:
        for i, run in enumerate(["a", "a", "b"]):
            cfg = oracle_cfg(srv.base_url, tmp_path / "c.sqlite")
            cfg.cache.enabled = cache
            o = build_oracle(cfg, tmp_path / run)
            o.chat_many("teacher", [o.request("teacher", [{"role": "user", "content": f"x{i}"}])], step="s", rnd=0)
            o.close()
    a = json.loads((tmp_path / "a" / "oracle_usage.json").read_text())["total"]
    b = json.loads((tmp_path / "b" / "oracle_usage.json").read_text())["total"]
    assert (a["requests"], b["requests"]) == (2, 1)
