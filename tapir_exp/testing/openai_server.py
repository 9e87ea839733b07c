"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for tests and benchmarks.

It speaks real HTTP (the official ``openai`` client talks to it unchanged), answers with a ``responder``
function, and can inject the faults a production endpoint produces: 429 with Retry-After, 500, a hang
past the client's timeout, malformed JSON, empty ``choices`` and truncated output. Every request is
recorded, so tests can assert exactly what was paid for.

    with FakeOpenAIServer(responder=lambda body: "hi") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x")
        srv.inject("429", times=2, retry_after=0.1)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], "str | dict[str, Any]"]
FAULTS = ("429", "500", "hang", "malformed", "empty_choices", "truncated", "drop")


def echo_responder(body: dict[str, Any]) -> str:
    return "echo: " + body["messages"][-1]["content"][:200]


@dataclass
class Fault:
    kind: str
    retry_after: float | None = None
    hang_s: float = 30.0


def _approx_tokens(text: str) -> int:
    return max(1, len(text.split()))


class _Server(ThreadingHTTPServer):
    # the default listen backlog (5) makes a burst of concurrent clients wait for TCP SYN retries
    request_queue_size = 512


class FakeOpenAIServer:
    """``responder(body)`` returns the reply text, or ``{"text": ..., "top_logprobs": [{token: logprob}, ...]}``
    (one dict per generated position) to exercise log-probability scoring."""

    def __init__(self, responder: Responder = echo_responder, latency_s: float = 0.0, port: int = 0,
                 logprobs: bool = True, model: str = "fake-model",
                 fault_when: Callable[[dict[str, Any]], str | None] | None = None):
        # ``fault_when(body)`` -> a fault kind for requests with that content (e.g. one item always fails).
        self.fault_when = fault_when
        self.responder, self.latency_s, self.logprobs, self.model = responder, latency_s, logprobs, model
        self.requests: list[dict[str, Any]] = []  # every request body received, faulted ones included
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.faults_served: list[str] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def inject(self, kind: str, times: int = 1, retry_after: float | None = None, hang_s: float = 30.0) -> None:
        """The next ``times`` requests get this fault (queued after any already injected)."""
        if kind not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {kind!r}")
        with self._lock:
            self._faults.extend(Fault(kind, retry_after, hang_s) for _ in range(times))

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ protocol
    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def completion(self, body: dict[str, Any], truncated: bool = False) -> dict[str, Any]:
        reply = self.responder(body)
        text, top = (reply, None) if isinstance(reply, str) else (reply["text"], reply.get("top_logprobs"))
        finish = "stop"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        words = text.split(" ")
        if truncated or (max_tokens and len(words) > max_tokens):
            text, finish = " ".join(words[: max(1, min(len(words) // 2, max_tokens or 10**9))]), "length"
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish,
                                  "message": {"role": "assistant", "content": text}}
        if body.get("logprobs") and self.logprobs:
            positions = top or [{tok: -0.05} for tok in text.split()[:64]]
            n = int(body.get("top_logprobs") or 1)
            content = []
            for pos in positions:
                ranked = sorted(pos.items(), key=lambda kv: -kv[1])
                content.append({"token": ranked[0][0], "logprob": ranked[0][1], "bytes": None,
                                "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in ranked[:n]]})
            choice["logprobs"] = {"content": content}
        prompt_tokens = sum(_approx_tokens(m.get("content") or "") for m in body.get("messages", []))
        return {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", self.model), "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": _approx_tokens(text),
                          "total_tokens": prompt_tokens + _approx_tokens(text)}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in separate writes; with Nagle's algorithm on, the body then waits for the
            # client's delayed ACK (~40 ms on Linux) — latency the server was not asked to add.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [
                        {"id": server.model, "object": "model", "created": 0, "owned_by": "tapir"}]}).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.arrivals.append(time.monotonic())
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                fault = server._next_fault()
                if fault is None and server.fault_when is not None and (kind := server.fault_when(body)):
                    fault = Fault(kind)
                if fault:
                    server.faults_served.append(fault.kind)
                if server.latency_s:
                    time.sleep(server.latency_s)
                kind = fault.kind if fault else None
                if kind == "429":
                    headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                    self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}', headers)
                elif kind == "500":
                    self._send(500, b'{"error": {"message": "internal error"}}')
                elif kind == "hang":
                    time.sleep(fault.hang_s)
                    self._send(504, b'{"error": {"message": "too late"}}')
                elif kind == "drop":
                    self.close_connection = True
                    self.connection.close()
                elif kind == "malformed":
                    self._send(200, b'{"id": "x", "choices": [ {"message": ')
                elif kind == "empty_choices":
                    self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                                "model": server.model, "choices": []}).encode())
                else:
                    self._send(200, json.dumps(server.completion(body, truncated=kind == "truncated")).encode())

        return Handler


def main() -> None:  # pragma: no cover - manual use: python -m tapir_exp.testing.openai_server
    import argparse

    ap = argparse.ArgumentParser(description="Serve the fake OpenAI-compatible endpoint (echo responder).")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--latency", type=float, default=0.0)
    a = ap.parse_args()
    srv = FakeOpenAIServer(port=a.port, latency_s=a.latency).start()
    print(srv.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
