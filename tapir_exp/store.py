"""RunStore: the run directory, atomic artifacts and the manifest that makes every step resumable.

Layout::

    <run_dir>/manifest.json            one entry per (round, step)
    <run_dir>/round_<r>/<step>.jsonl   record artifacts
    <run_dir>/round_<r>/<name>/        directory artifacts (e.g. the student checkpoint)

A step is *done* when its manifest entry carries the same signature — a hash of the step name, its
config subtree and the hashes of its input artifacts — and its artifact still hashes to what the
manifest recorded. Every write goes to a temporary name in the same directory and is renamed into
place, so a process killed mid-write leaves either the old artifact or none, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tapir_exp.errors import TapirError
from tapir_exp.records import Example, load_examples, write_jsonl


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict ordering."""
    blob = json.dumps(_plain(obj), sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _plain(obj: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, DictConfig | ListConfig):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        pass
    return obj


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a directory's files (names + contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            h.update(_digest_file(p).encode())
    else:
        h.update(_digest_file(path).encode())
    return h.hexdigest()[:16]


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_plain(obj), indent=2, ensure_ascii=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` (old content removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            trash = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class StepEntry:
    step: str
    round: int
    signature: str
    artifact: str
    artifact_hash: str
    counts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    finished_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.round}/{self.step}"


@dataclass
class StepResult:
    """What a step produced: its records (for record artifacts), where it lives and whether it was reused."""

    records: list[Example] | None
    path: Path
    entry: StepEntry
    reused: bool


class RunStore:
    """Artifacts and manifest of one run directory.

    ``rank > 0`` makes a *follower* (the other processes of a multi-GPU job, see ``tapir_exp.distributed``):
    it never computes or commits a step, it waits until the leader (rank 0) has committed the step with the
    same signature and loads that — except collective steps (training), which every rank runs together and
    only the leader commits."""

    MANIFEST = "manifest.json"

    def __init__(self, run_dir: str | os.PathLike, rank: int = 0, poll_s: float = 2.0):
        self.root = Path(run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.follower, self.poll_s = rank > 0, float(poll_s)
        if not self.follower:  # a follower must not delete the leader's writes in progress
            self._clean_temporaries()
        self.entries: dict[str, StepEntry] = self._load_manifest()

    # ------------------------------------------------------------------ paths
    def round_dir(self, round: int) -> Path:
        return self.root / f"round_{round}"

    def artifact_path(self, step: str, round: int, suffix: str = ".jsonl") -> Path:
        return self.round_dir(round) / f"{step}{suffix}"

    # ------------------------------------------------------------------ manifest
    def _load_manifest(self) -> dict[str, StepEntry]:
        path = self.root / self.MANIFEST
        if not path.exists():
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
        return {f"{e['round']}/{e['step']}": StepEntry(**e) for e in data.get("steps", [])}

    def _save_manifest(self) -> None:
        steps = sorted(self.entries.values(), key=lambda e: (e.round, e.finished_at))
        atomic_write_json(self.root / self.MANIFEST, {"steps": [e.__dict__ for e in steps]})

    def _clean_temporaries(self) -> None:
        """Remove leftovers of writes interrupted by a kill (they were never renamed into place)."""
        for p in self.root.rglob(".*.tmp"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def signature(self, step: str, config: Any, inputs: dict[str, str] | None = None) -> str:
        """Hash of the step name, its config subtree and its input artifacts' hashes."""
        return stable_hash({"step": step, "config": config, "inputs": inputs or {}})

    def entry(self, step: str, round: int) -> StepEntry | None:
        return self.entries.get(f"{round}/{step}")

    def await_leader(self, step: str, round: int, signature: str) -> None:
        """Follower: block until the leader has committed this step with this signature."""
        from tapir_exp.distributed import leader_failure

        while True:
            self.entries = self._load_manifest()
            if self.is_done(step, round, signature):
                return
            failed = leader_failure(self.root)
            if failed:
                raise TapirError(f"{self.root}: the leader (rank 0) failed before step {round}/{step}: {failed}")
            time.sleep(self.poll_s)

    def is_done(self, step: str, round: int, signature: str) -> bool:
        e = self.entry(step, round)
        if e is None or e.signature != signature:
            return False
        path = self.root / e.artifact
        return path.exists() and file_hash(path) == e.artifact_hash

    def commit(self, step: str, round: int, signature: str, path: Path, counts: dict[str, Any] | None = None,
               seconds: float = 0.0) -> StepEntry:
        e = StepEntry(step=step, round=round, signature=signature, artifact=str(path.relative_to(self.root)),
                      artifact_hash=file_hash(path), counts=dict(counts or {}), seconds=round_seconds(seconds),
                      finished_at=time.time())
        self.entries[e.key] = e
        self._save_manifest()
        return e

    # ------------------------------------------------------------------ steps
    def run_records_step(
        self,
        step: str,
        round: int,
        config: Any,
        inputs: dict[str, str],
        compute: Callable[[], tuple[Iterable[Example], dict[str, Any]]],
    ) -> StepResult:
        """Load the step's records if done with this signature, else compute, write atomically and commit.

        ``compute`` returns ``(records, counts)``.
        """
        sig = self.signature(step, config, inputs)
        path = self.artifact_path(step, round)
        if self.follower:
            self.await_leader(step, round, sig)
        if self.is_done(step, round, sig):
            return StepResult(load_examples(path), path, self.entry(step, round), reused=True)
        t0 = time.perf_counter()
        records, counts = compute()
        records = list(records)
        write_jsonl(path, records)
        entry = self.commit(step, round, sig, path, {"records": len(records), **counts}, time.perf_counter() - t0)
        return StepResult(records, path, entry, reused=False)

    def run_dir_step(
        self,
        step: str,
        round: int,
        config: Any,
        inputs: dict[str, str],
        compute: Callable[[Path], dict[str, Any]],
        name: str | None = None,
        collective: bool = False,
    ) -> StepResult:
        """Like :meth:`run_records_step` for a directory artifact; ``compute(tmp_dir)`` fills it and returns counts.

        ``collective``: every rank runs ``compute`` (distributed training); a follower's output directory is
        private and discarded, the leader's is committed."""
        sig = self.signature(step, config, inputs)
        path = self.round_dir(round) / (name or step)
        if self.follower:
            if collective and not self.is_done(step, round, sig):
                with tempfile.TemporaryDirectory(prefix=f".{step}-follower-", suffix=".tmp", dir=self.root) as tmp:
                    compute(Path(tmp))
            self.await_leader(step, round, sig)
        if self.is_done(step, round, sig):
            return StepResult(None, path, self.entry(step, round), reused=True)
        t0 = time.perf_counter()
        with atomic_dir(path) as tmp:
            counts = compute(tmp)
        entry = self.commit(step, round, sig, path, counts or {}, time.perf_counter() - t0)
        return StepResult(None, path, entry, reused=False)

    def run_json_step(
        self,
        step: str,
        round: int,
        config: Any,
        inputs: dict[str, str],
        compute: Callable[[], dict[str, Any]],
    ) -> tuple[dict[str, Any], StepEntry, bool]:
        """Like :meth:`run_records_step` for a JSON document (metrics, reports)."""
        sig = self.signature(step, config, inputs)
        path = self.artifact_path(step, round, ".json")
        if self.follower:
            self.await_leader(step, round, sig)
        if self.is_done(step, round, sig):
            return json.loads(path.read_text(encoding="utf-8")), self.entry(step, round), True
        t0 = time.perf_counter()
        doc = compute()
        atomic_write_json(path, doc)
        return doc, self.commit(step, round, sig, path, {}, time.perf_counter() - t0), False


def round_seconds(s: float) -> float:
    return float(f"{s:.3f}")
