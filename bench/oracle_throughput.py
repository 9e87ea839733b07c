"""Oracle client throughput against a local OpenAI-compatible server with fixed per-request latency.

Baseline: the same client with concurrency 1 (one request at a time, what a naive loop does), measured in
the same process. Also measures a fully cached re-run.

    .venv/bin/python bench/oracle_throughput.py --requests 200 --latency 0.05 --concurrency 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapir_exp.llm import build_oracle  # noqa: E402
from tapir_exp.testing.openai_server import FakeOpenAIServer  # noqa: E402
from tests.support_llm import oracle_cfg  # noqa: E402


def timed(base_url: str, cache: Path, n: int, concurrency: int, tag: str) -> float:
    o = build_oracle(oracle_cfg(base_url, cache, concurrency=concurrency), None)
    reqs = [o.request("teacher", [{"role": "user", "content": f"{tag} {i}"}]) for i in range(n)]
    t0 = time.perf_counter()
    res = o.chat_many("teacher", reqs, step="bench", round=0)
    dt = time.perf_counter() - t0
    o.close()
    assert all(r.ok for r in res)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=32)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(latency_s=a.latency) as srv:
        cache = Path(tmp) / "c.sqlite"
        base = timed(srv.base_url, cache, a.requests, 1, "serial")
        fast = timed(srv.base_url, cache, a.requests, a.concurrency, "parallel")
        cached = timed(srv.base_url, cache, a.requests, a.concurrency, "parallel")
    print(f"{a.requests} requests, {a.latency * 1000:.0f} ms latency per request")
    print(f"concurrency 1 (baseline): {base:.2f}s  {a.requests / base:.1f} req/s")
    print(f"concurrency {a.concurrency}:          {fast:.2f}s  {a.requests / fast:.1f} req/s  speed-up x{base / fast:.1f}")
    print(f"cached re-run:           {cached:.3f}s  speed-up x{base / cached:.0f} vs baseline")


if __name__ == "__main__":
    main()
