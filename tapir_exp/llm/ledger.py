"""Usage ledger: what the oracle cost, by role, step and round.

Counts requests actually sent (``requests``), answers served from the cache (``cache_hits``), tokens,
retries, failures, truncated answers, prompts shortened to fit a context (``shortened``) and cost from the
price table.

Durable per request: every count is committed to SQLite as it happens, an answered request's usage in the
same transaction as its cache entry (:meth:`OracleCache.put`), so a SIGKILL loses at most the requests in
flight. The rows live in the cache file (``usage`` table) under this run's ledger id, or, with the cache
disabled, in ``<run_dir>/oracle_usage.sqlite``. The id is kept in ``<run_dir>/oracle_usage.json`` (the
readable totals, rewritten now and then), so a resumed or requeued run keeps counting into the same rows and
its totals cover every attempt; a deleted run directory starts a new ledger.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tapir_exp.files import atomic_write_json

FIELDS = ("requests", "cache_hits", "prompt_tokens", "completion_tokens", "retries", "failures",
          "parse_failures", "truncated", "shortened", "cost_usd")
USAGE_DB = "oracle_usage.sqlite"

_SCHEMA = ("CREATE TABLE IF NOT EXISTS usage (ledger TEXT NOT NULL, role TEXT NOT NULL, step TEXT NOT NULL, "
           "round TEXT NOT NULL, " + ", ".join(f"{f} REAL NOT NULL DEFAULT 0" for f in FIELDS)
           + ", PRIMARY KEY (ledger, role, step, round))")


def _zero() -> dict[str, float]:
    return dict.fromkeys(FIELDS, 0)


class UsageDB:
    """A SQLite connection holding the ``usage`` table (the oracle cache's, or a ledger's own file)."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock):
        self.conn, self.lock = conn, lock
        with lock:
            conn.execute(_SCHEMA)

    @classmethod
    def open(cls, path: str | Path) -> UsageDB:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=60.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        return cls(conn, threading.Lock())

    @staticmethod
    def add_sql(conn: sqlite3.Connection, ledger: str, key: tuple[str, str, str], counts: dict[str, float]) -> None:
        """Add ``counts`` to one row; the caller holds the lock and owns the transaction."""
        cols = [k for k in counts if k in FIELDS]
        if not cols:
            return
        conn.execute(f"INSERT INTO usage (ledger, role, step, round, {', '.join(cols)}) VALUES (?, ?, ?, ?, "
                     f"{', '.join('?' * len(cols))}) ON CONFLICT (ledger, role, step, round) DO UPDATE SET "
                     + ", ".join(f"{c} = {c} + excluded.{c}" for c in cols), (ledger, *key, *(counts[c] for c in cols)))

    def add(self, ledger: str, key: tuple[str, str, str], counts: dict[str, float]) -> None:
        with self.lock:
            self.add_sql(self.conn, ledger, key, counts)  # autocommit: one statement, one transaction

    def rows(self, ledger: str) -> dict[tuple[str, str, str], dict[str, float]]:
        with self.lock:
            cur = self.conn.execute(f"SELECT role, step, round, {', '.join(FIELDS)} FROM usage WHERE ledger = ?",
                                    (ledger,))
            return {(r[0], r[1], r[2]): dict(zip(FIELDS, r[3:], strict=True)) for r in cur}


class UsageLedger:
    def __init__(self, path: str | Path | None = None, db: UsageDB | None = None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str, str], dict[str, float]] = defaultdict(_zero)
        self.db: UsageDB | None = None
        self._own_db = db is None
        self.id = ""
        if self.path is None:
            return  # in memory only (no run directory)
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.db = db or UsageDB.open(self.path.with_name(USAGE_DB))
        self.id = saved.get("ledger_id") or uuid.uuid4().hex
        stored = self.db.rows(self.id)
        if not stored and saved.get("rows"):  # a run directory from before the durable ledger: carry it over
            for row in saved["rows"]:
                key = (row["role"], row["step"], str(row["round"]))
                self.db.add(self.id, key, {k: row.get(k, 0) for k in FIELDS})
            stored = self.db.rows(self.id)
        self._rows.update(stored)
        if not saved.get("ledger_id"):
            self.save()  # the id must be on disk before the first count is committed under it

    def add(self, role: str, step: str, rnd: int, **counts: float) -> None:
        """Count and commit at once."""
        if self.db is not None:
            self.db.add(self.id, (role, step, str(rnd)), counts)
        self.count(role, step, rnd, **counts)

    def sql(self, role: str, step: str, rnd: int, **counts: float) -> Callable[[sqlite3.Connection], None]:
        """The counts as a write for the caller's transaction on this ledger's database (the cache's ``put``
        of the answer they belong to); call :meth:`count` once it committed."""
        key = (role, step, str(rnd))
        return lambda conn: UsageDB.add_sql(conn, self.id, key, counts)

    def count(self, role: str, step: str, rnd: int, **counts: float) -> None:
        """In memory only (already committed)."""
        with self._lock:
            row = self._rows[(role, step, str(rnd))]
            for k, v in counts.items():
                row[k] += v

    def close(self) -> None:
        """Close the ledger's own database file (a cache's connection is the cache's to close)."""
        if self.db is not None and self._own_db:
            with self.db.lock:
                self.db.conn.close()
        self.db = None

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
        """Rewrite the readable JSON (the counts themselves are already committed)."""
        target = Path(path) if path else self.path
        if target is None:
            return
        with self._lock:
            rows = [{"role": r, "step": s, "round": int(n), **_rounded(v)} for (r, s, n), v in sorted(self._rows.items())]
        atomic_write_json(target, {"ledger_id": self.id, "rows": rows, **self.summary()})


def _rounded(row: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 6) if k == "cost_usd" else int(v)) for k, v in row.items()}
