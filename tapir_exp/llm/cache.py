"""The persistent oracle cache: one SQLite file (WAL mode), content-addressed by request.

Every answer is committed as soon as it arrives, together with its usage-ledger counts in the same
transaction (the ``usage`` table of :mod:`tapir_exp.llm.ledger`), so a killed run loses at most the requests
that were in flight, answers and cost alike. WAL lets several processes of one sweep read and write the same
file concurrently; writers wait (busy timeout) instead of failing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tapir_exp.llm.ledger import UsageDB


class OracleCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, backend TEXT, model TEXT, "
                         "value TEXT NOT NULL, created REAL NOT NULL)")
        self.hits = 0
        self.misses = 0
        self.usage_db = UsageDB(self._db, self._lock)  # the ledgers of the runs using this cache

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for i in range(0, len(unique), 500):  # SQLite's bound-parameter limit
                chunk = unique[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for key, value in self._db.execute(f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk):
                    found[key] = json.loads(value)
        self.hits += sum(k in found for k in keys)
        self.misses += sum(k not in found for k in keys)
        return found

    def put(self, key: str, value: dict[str, Any], backend: str = "", model: str = "",
            also: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Store an answer; ``also(conn)`` (the ledger's counts for it) runs in the same transaction."""
        blob = json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO responses (key, backend, model, value, created) "
                                 "VALUES (?, ?, ?, ?, ?)", (key, backend, model, blob, time.time()))
                if also is not None:
                    also(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class NoCache:
    """``oracle.cache.enabled=false``: every request is sent (the ledger keeps its own file)."""

    hits = misses = 0
    usage_db = None

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        self.misses += len(keys)
        return {}

    def put(self, key: str, value: dict[str, Any], backend: str = "", model: str = "",
            also: Callable[[sqlite3.Connection], None] | None = None) -> None:
        pass

    def close(self) -> None:
        pass
