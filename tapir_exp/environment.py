"""What machine and software a round was computed on: recorded in ``summary.json``, listed by ``tapir-report``.

Float results depend on the CPU (its instruction set picks the kernels), the number of threads (the order of
the sums) and the versions of torch and the packages around it; two machines can both be deterministic and
still disagree (issue 19). A report can only say which claims hold bytewise if it knows which runs shared an
environment, so every round records the id of the one it was computed in and the summary keeps the details.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from importlib import metadata
from typing import Any

from tapir_exp.files import stable_hash


@functools.cache
def _static() -> dict[str, Any]:
    # one entry a package: a source checkout on sys.path (PYTHONPATH=$PWD) shows the project's own metadata
    # (an ignored *.egg-info) beside the installed one, which made the list depend on how a run was started
    packages = sorted({f"{d.metadata['Name'].lower()}=={d.version}" for d in metadata.distributions()
                       if d.metadata["Name"]})
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "python": platform.python_version(), "torch": _version("torch"),
            "transformers": _version("transformers"), "packages": len(packages),
            "packages_hash": stable_hash(packages, 12), **({"kernel_env": k} if (k := kernel_env()) else {})}


def describe() -> dict[str, Any]:
    """This process's environment; ``torch_threads`` only once torch is imported (a re-run that loads no
    model does not import it)."""
    env = dict(_static())
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
    return env


def env_id(env: dict[str, Any]) -> str:
    return stable_hash(env, 10)


# the instruction-set extensions that decide which float kernels torch's CPU backend picks
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")


# environment variables that make torch, MKL or oneDNN pick other float kernels than the CPU's best (set by a
# cluster's modules, or to emulate an older CPU on this one: docs/skills_world.md "Reproducibility")
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def kernel_env() -> str | None:
    """The :data:`KERNEL_ENV` variables this process has set (``NAME=value ...``), None when none is: a
    default environment's record, and so its id, stays what it was before they were recorded."""
    return " ".join(f"{k}={os.environ[k]}" for k in KERNEL_ENV if os.environ.get(k)) or None


def _cpuinfo(field: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.split(":", 1)[0].strip().lower() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what ``platform`` says)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of :data:`KERNEL_FLAGS` the CPU has (Linux; empty elsewhere)."""
    have = set((_cpuinfo("flags") or _cpuinfo("features") or "").split())
    return [f for f in KERNEL_FLAGS if f in have]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
