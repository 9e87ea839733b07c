"""A vLLM engine in a worker process (:mod:`tapir_exp.vllm_worker`), from the side that uses it.

One worker per engine: the vLLM oracle backend keeps one alive between batches and ends it when the
devices are needed elsewhere; ``generation=vllm`` starts ``data_parallel_size`` of them per call. Each
worker is given its devices explicitly: ``CUDA_VISIBLE_DEVICES`` (its slice of ``devices``, of the
parent's ``CUDA_VISIBLE_DEVICES``, or of the GPUs torch counts) and, on a CPU, its share of this process's
cores (the worker sets its affinity and vLLM binds its threads within it).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tapir_exp.errors import ConfigError

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def cuda_devices() -> list[str]:
    """The GPUs this process may hand out, without creating a CUDA context here."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the package
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def plan_workers(n: int, per_worker: int, devices: list[Any] | None, where: str) -> list[dict[str, Any]]:
    """For each of ``n`` workers: ``{"env": {...}, "cpus": [...] | None}``.

    GPUs (given, or found): worker k gets devices[k*per_worker:(k+1)*per_worker] as CUDA_VISIBLE_DEVICES.
    Without GPUs and n > 1: each worker gets an equal contiguous share of this process's CPU cores."""
    devs = [str(d) for d in devices] if devices is not None else cuda_devices()
    if devs and len(devs) < n * per_worker:
        raise ConfigError(where, f"{n} worker(s) x {per_worker} device(s) each need {n * per_worker} devices; "
                                 f"given {len(devs)}: {','.join(devs)}")
    plans: list[dict[str, Any]] = [{"env": {}, "cpus": None} for _ in range(n)]
    for k, plan in enumerate(plans):
        if devs:
            plan["env"]["CUDA_VISIBLE_DEVICES"] = ",".join(devs[k * per_worker:(k + 1) * per_worker])
    if n > 1 and not cuda_devices():
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < n:
            raise ConfigError(where, f"{n} CPU workers need at least {n} cores; this process may use {len(cores)}")
        share = len(cores) // n
        for k, plan in enumerate(plans):
            plan["cpus"] = cores[k * share:(k + 1) * share]
            # vLLM's automatic binding reserves a core per worker; with an explicit list it uses exactly these.
            plan["env"]["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, plan["cpus"]))
    return plans


class EngineProcess:
    """One vLLM engine in a child process, spoken to in JSON lines over two pipes."""

    def __init__(self, engine: dict[str, Any], python: str | None = None, env: dict[str, str] | None = None,
                 cpus: list[int] | None = None):
        self.engine, self.python, self.cpus = engine, python, cpus
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> EngineProcess:
        """Spawn the worker; it builds the engine while the caller goes on (see :meth:`ready`)."""
        child_in, parent_out = os.pipe()
        parent_in, child_out = os.pipe()
        pythonpath = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": pythonpath, **self.extra_env}
        try:
            self.proc = subprocess.Popen([self.python or sys.executable, "-m", "tapir_exp.vllm_worker", str(child_in),
                                          str(child_out)], pass_fds=(child_in, child_out), env=env)
        finally:
            os.close(child_in)
            os.close(child_out)
        self._tx = os.fdopen(parent_out, "w", encoding="utf-8")
        self._rx = os.fdopen(parent_in, "r", encoding="utf-8")
        self._send({"engine": self.engine, "cpus": self.cpus})
        return self

    def ready(self) -> dict[str, Any]:
        """Wait until the engine is built; what the worker reports about itself (pid, devices, cores)."""
        self.info = self._recv()["info"]
        return self.info

    def send(self, op: str, **args: Any) -> None:
        self._send({"op": op, "args": args})

    def receive(self) -> dict[str, Any]:
        return self._recv()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.receive()

    def close(self) -> None:
        """End the worker; its engine's memory is free once this returns."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self._send({"op": "exit"})
                self.proc.wait(120)
        except (OSError, ValueError, RuntimeError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            for fh in (self._tx, self._rx):
                with contextlib.suppress(OSError):
                    fh.close()
            self.proc = None

    def _send(self, msg: dict[str, Any]) -> None:
        try:
            self._tx.write(json.dumps(msg) + "\n")
            self._tx.flush()
        except BrokenPipeError:
            self._died()

    def _died(self) -> None:
        code = self.proc.wait() if self.proc is not None else None
        raise RuntimeError(f"the vLLM worker exited (code {code}) without answering; its log is above")

    def _recv(self) -> dict[str, Any]:
        line = self._rx.readline()
        if not line:
            self._died()
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"the vLLM worker failed:\n{msg['error']}")
        return msg
