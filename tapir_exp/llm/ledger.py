"""Usage ledger: what the oracle cost, by role, step and round.

Counts requests actually sent (``requests``), answers served from the cache (``cache_hits``), tokens,
retries, failures, truncated answers, prompts shortened to fit a context (``shortened``) and cost from the
price table. Saved as JSON in the run directory and
reloaded on resume, so the totals of a killed-and-resumed run are the totals of the whole run.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from tapir_exp.store import atomic_write_json

FIELDS = ("requests", "cache_hits", "prompt_tokens", "completion_tokens", "retries", "failures",
          "parse_failures", "truncated", "shortened", "cost_usd")


def _zero() -> dict[str, float]:
    return dict.fromkeys(FIELDS, 0)


class UsageLedger:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str, str], dict[str, float]] = defaultdict(_zero)
        if self.path and self.path.is_file():
            for row in json.loads(self.path.read_text()).get("rows", []):
                self._rows[(row["role"], row["step"], str(row["round"]))] = {k: row.get(k, 0) for k in FIELDS}

    def add(self, role: str, step: str, round: int, **counts: float) -> None:
        with self._lock:
            row = self._rows[(role, step, str(round))]
            for k, v in counts.items():
                row[k] += v

    def _group(self, idx: int) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = defaultdict(_zero)
        for key, row in self._rows.items():
            for k, v in row.items():
                out[key[idx]][k] += v
        return {k: _rounded(v) for k, v in sorted(out.items())}

    def summary(self) -> dict[str, Any]:
        with self._lock:
            total = _zero()
            for row in self._rows.values():
                for k, v in row.items():
                    total[k] += v
            return {"total": _rounded(total), "by_role": self._group(0), "by_step": self._group(1),
                    "by_round": self._group(2)}

    def save(self, path: str | Path | None = None) -> None:
        target = Path(path) if path else self.path
        if target is None:
            return
        with self._lock:
            rows = [{"role": r, "step": s, "round": int(n), **_rounded(v)} for (r, s, n), v in sorted(self._rows.items())]
        atomic_write_json(target, {"rows": rows, **self.summary()})


def _rounded(row: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 6) if k == "cost_usd" else int(v)) for k, v in row.items()}
