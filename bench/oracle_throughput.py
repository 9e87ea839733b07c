"""Oracle client throughput against an OpenAI-compatible server with a fixed latency per request.

The server (`tapir_exp.testing.openai_server`, real HTTP on 127.0.0.1) runs in its own process, so the
client's CPU time is measured alone. Reported, in one run:

- the client at ``--concurrency``: requests/s as a fraction of the ideal (concurrency / latency), and client
  CPU time per request;
- a sequential loop (concurrency 1, what a naive script does) on ``--sequential`` of the requests, for
  contrast;
- a fully cached re-run of the same requests (the SQLite cache: nothing is sent).

    .venv/bin/python bench/oracle_throughput.py --requests 2000 --latency 0.2 --concurrency 64
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapir_exp.llm import build_oracle  # noqa: E402
from tapir_exp.testing.oracle_config import oracle_cfg  # noqa: E402


def timed(base_url: str, cache: Path, n: int, concurrency: int, tag: str, http_client: str = "httpx"
          ) -> tuple[float, float, int]:
    """(wall seconds, client CPU seconds, requests actually sent) for n distinct requests."""
    cfg = oracle_cfg(base_url, cache, concurrency=concurrency, timeout_s=30.0)
    cfg.backends.openai.http_client = http_client
    o = build_oracle(cfg, None)
    reqs = [o.request("teacher", [{"role": "user", "content": f"{tag} {i}"}]) for i in range(n)]
    c0, t0 = time.process_time(), time.perf_counter()
    res = o.chat_many("teacher", reqs, step="bench", rnd=0)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    sent = o.usage.summary()["total"]["requests"]
    o.close()
    assert all(r.ok for r in res)
    return dt, cpu, sent


def server_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--sequential", type=int, default=50, help="requests for the sequential contrast")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--http-clients", default="httpx,aiohttp",
                    help="oracle.backends.openai.http_client values to compare at --concurrency")
    a = ap.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "tapir_exp.testing.openai_server", "--port", str(a.port),
                               "--latency", str(a.latency)], stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()  # printed once the server listens
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "c.sqlite"
            seq, seq_cpu, _ = timed(base_url, cache, a.sequential, 1, "sequential")
            runs = {}
            for client in a.http_clients.split(","):
                s0 = server_cpu(server.pid)
                par, par_cpu, sent = timed(base_url, cache, a.requests, a.concurrency, f"parallel {client}", client)
                runs[client] = (par, par_cpu, sent, server_cpu(server.pid) - s0)
            hit, _, resent = timed(base_url, cache, a.requests, a.concurrency, f"parallel {client}", client)
    finally:
        server.terminate()
        server.wait()
    ideal = a.concurrency / a.latency
    print(f"{a.requests} requests, {a.latency * 1000:.0f} ms server latency, server in its own process")
    print(f"{'setting':40} {'wall s':>8} {'req/s':>8} {'of ideal':>9} {'client CPU/req':>15}")
    print(f"{'sequential loop (' + str(a.sequential) + ' requests)':40} {seq:8.2f} {a.sequential / seq:8.1f} "
          f"{a.sequential / seq / (1 / a.latency):8.0%} {seq_cpu / a.sequential * 1000:12.2f} ms")
    for client, (par, par_cpu, _sent, _) in runs.items():
        print(f"{'concurrency ' + str(a.concurrency) + ', http_client=' + client:40} {par:8.2f} {a.requests / par:8.1f} "
              f"{a.requests / par / ideal:8.0%} {par_cpu / a.requests * 1000:12.2f} ms")
    print(f"{'cached re-run (' + str(resent) + ' sent)':40} {hit:8.3f} {a.requests / hit:8.0f}")
    for client, (par, par_cpu, sent, srv_cpu) in runs.items():
        print(f"{client}: client CPU {par_cpu / par:.0%} of a core, server {srv_cpu / par:.0%} ({os.cpu_count()} "
              f"cores; server {srv_cpu / a.requests * 1000:.2f} ms/request); x{(a.requests / par) / (a.sequential / seq):.1f} "
              f"over the sequential loop; requests sent {sent}")
    print(f"cached re-run vs sending: x{min(r[0] for r in runs.values()) / hit:.0f} (ideal {ideal:.0f} req/s)")


if __name__ == "__main__":
    main()
