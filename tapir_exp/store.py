"""RunStore: the run directory, atomic artifacts and the manifest that makes every step resumable.

Layout::

    <run_dir>/manifest.json            one entry per (round, step)
    <run_dir>/round_<r>/<step>.jsonl   record artifacts
    <run_dir>/round_<r>/<name>/        directory artifacts (e.g. the student checkpoint)

A step is *done* when its manifest entry carries the same signature — a hash of the step name, its
config subtree and the hashes of its input artifacts — and its artifact is still the one committed. That
check reads no artifact: the commit records a fingerprint (every file's size and mtime, hence also the
file count) next to the content hash, and a resumed run compares stats only, so a 7B run does not re-read
tens of GB of checkpoints to decide that a step is done. A file whose stats differ (a copied run directory,
a ``touch``) is re-hashed once: same content, and the fingerprint is re-stamped; other content, and the
step runs again. An edit that keeps size and mtime is found only by the full check, ``tapir-verify
<run dir>`` (:func:`verify_run`), which re-hashes every artifact. The content hash is computed once, at
commit, and signatures of later steps reuse the recorded value. Every write is atomic (:mod:`tapir_exp.files`),
so a process killed mid-write leaves either the old artifact or none, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tapir_exp.errors import TapirError
from tapir_exp.files import atomic_dir, atomic_write_json, content_state, file_hash, fingerprint, stable_hash
from tapir_exp.records import Example, load_examples, write_jsonl


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
    # {file: [size, mtime_ns, sha256]} at commit; None in manifests written before fingerprints existed.
    files: dict[str, list] | None = None

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


def by_content(config: Any) -> Any:
    """``config`` with every absolute path of an existing file replaced by the file's content hash.

    A step's signature then follows what a file holds, not where it is: a run directory moved or copied
    elsewhere (another mount, another cluster), or a checkout whose packaged demo files sit elsewhere,
    reuses its steps; a file edited in place is noticed. Directories stay as written (a step that reads one
    names what it read through its inputs)."""
    if isinstance(config, dict):
        return {k: by_content(v) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [by_content(v) for v in config]
    if isinstance(config, str) and os.path.isabs(config) and os.path.isfile(config):
        return {"file_sha256": file_hash(config)}
    return config


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
        # rounds with a step committed by this process (the others were all reused from earlier processes)
        self.computed_rounds: set[int] = set()

    # ------------------------------------------------------------------ paths
    def round_dir(self, rnd: int) -> Path:
        return self.root / f"round_{rnd}"

    def artifact_path(self, step: str, rnd: int, suffix: str = ".jsonl") -> Path:
        return self.round_dir(rnd) / f"{step}{suffix}"

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
        """Remove leftovers of writes interrupted by a kill (they were never renamed into place).

        Not the run config's snapshot nor Hydra's files: every rank of a multi-process job writes those
        (``task.setup_run_dir``) while the leader opens its store, so a temporary there may be another rank's
        write in flight (removing it failed that rank's rename)."""
        for p in self.root.rglob(".*.tmp"):
            rel = p.relative_to(self.root).parts
            if rel[0] == ".hydra" or (len(rel) == 1 and p.name.startswith(".config.")):
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def signature(self, step: str, config: Any, inputs: dict[str, str] | None = None) -> str:
        """Hash of the step name, its config subtree (files named by their content: :func:`by_content`) and
        its input artifacts' hashes."""
        return stable_hash({"step": step, "config": by_content(config), "inputs": inputs or {}})

    def entry(self, step: str, rnd: int) -> StepEntry | None:
        return self.entries.get(f"{rnd}/{step}")

    def await_leader(self, step: str, rnd: int, signature: str) -> None:
        """Follower: block until the leader has committed this step with this signature."""
        from tapir_exp.distributed import leader_failure

        while True:
            self.entries = self._load_manifest()
            if self.is_done(step, rnd, signature):
                return
            failed = leader_failure(self.root)
            if failed:
                raise TapirError(f"{self.root}: the leader (rank 0) failed before step {rnd}/{step}: {failed}")
            time.sleep(self.poll_s)

    def is_done(self, step: str, rnd: int, signature: str) -> bool:
        """Same signature and the committed artifact still in place — judged by file stats, not content."""
        e = self.entry(step, rnd)
        if e is None or e.signature != signature:
            return False
        path = self.root / e.artifact
        if not path.exists():
            return False
        if e.files is not None and _same_stats(fingerprint(path), e.files):
            return True
        # Stats differ (or an old manifest has none): decide by content, once, and re-stamp if it matches.
        digest, files = content_state(path)
        if digest != e.artifact_hash:
            return False
        e.files = files
        if not self.follower:
            self._save_manifest()
        return True

    def commit(self, step: str, rnd: int, signature: str, path: Path, counts: dict[str, Any] | None = None,
               seconds: float = 0.0) -> StepEntry:
        digest, files = content_state(path)
        e = StepEntry(step=step, round=rnd, signature=signature, artifact=str(path.relative_to(self.root)),
                      artifact_hash=digest, counts=dict(counts or {}), seconds=round_seconds(seconds),
                      finished_at=time.time(), files=files)
        self.entries[e.key] = e
        self.computed_rounds.add(rnd)
        self._save_manifest()
        return e

    def hash_of(self, path: str | os.PathLike) -> str:
        """The content hash of an artifact as recorded at its commit (no read); hashed only if this run never
        committed it (e.g. a checkpoint given from outside)."""
        path = Path(path)
        rel = str(path.relative_to(self.root)) if path.is_relative_to(self.root) else None
        for e in self.entries.values():
            if e.artifact == rel:
                return e.artifact_hash
        return file_hash(path)

    # ------------------------------------------------------------------ steps
    def run_records_step(
        self,
        step: str,
        rnd: int,
        config: Any,
        inputs: dict[str, str],
        compute: Callable[[], tuple[Iterable[Example], dict[str, Any]]],
    ) -> StepResult:
        """Load the step's records if done with this signature, else compute, write atomically and commit.

        ``compute`` returns ``(records, counts)``.
        """
        sig = self.signature(step, config, inputs)
        path = self.artifact_path(step, rnd)
        if self.follower:
            self.await_leader(step, rnd, sig)
        if self.is_done(step, rnd, sig):
            return StepResult(load_examples(path), path, self.entry(step, rnd), reused=True)
        t0 = time.perf_counter()
        records, counts = compute()
        records = list(records)
        write_jsonl(path, records)
        entry = self.commit(step, rnd, sig, path, {"records": len(records), **counts}, time.perf_counter() - t0)
        return StepResult(records, path, entry, reused=False)

    def run_dir_step(
        self,
        step: str,
        rnd: int,
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
        path = self.round_dir(rnd) / (name or step)
        if self.follower:
            if collective and not self.is_done(step, rnd, sig):
                with tempfile.TemporaryDirectory(prefix=f".{step}-follower-", suffix=".tmp", dir=self.root) as tmp:
                    compute(Path(tmp))
            self.await_leader(step, rnd, sig)
        if self.is_done(step, rnd, sig):
            return StepResult(None, path, self.entry(step, rnd), reused=True)
        t0 = time.perf_counter()
        with atomic_dir(path) as tmp:
            counts = compute(tmp)
        entry = self.commit(step, rnd, sig, path, counts or {}, time.perf_counter() - t0)
        return StepResult(None, path, entry, reused=False)

    def run_json_step(
        self,
        step: str,
        rnd: int,
        config: Any,
        inputs: dict[str, str],
        compute: Callable[[], dict[str, Any]],
    ) -> tuple[dict[str, Any], StepEntry, bool]:
        """Like :meth:`run_records_step` for a JSON document (metrics, reports)."""
        sig = self.signature(step, config, inputs)
        path = self.artifact_path(step, rnd, ".json")
        if self.follower:
            self.await_leader(step, rnd, sig)
        if self.is_done(step, rnd, sig):
            return json.loads(path.read_text(encoding="utf-8")), self.entry(step, rnd), True
        t0 = time.perf_counter()
        doc = compute()
        atomic_write_json(path, doc)
        return doc, self.commit(step, rnd, sig, path, {}, time.perf_counter() - t0), False


def round_seconds(s: float) -> float:
    return float(f"{s:.3f}")


def _same_stats(now: dict[str, list[int]], recorded: dict[str, list]) -> bool:
    return now.keys() == recorded.keys() and all(now[k] == recorded[k][:2] for k in now)


@dataclass
class VerifyReport:
    """What :func:`verify_run` found: one line per problem, and how much it read."""

    artifacts: int = 0
    files: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)
    changed_steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(run_dir: str | os.PathLike, forget: bool = False) -> VerifyReport:
    """The full check: re-hash every committed artifact and name each file whose content, presence or
    count differs from the commit (including edits that kept size and mtime, which the fingerprint cannot
    see). ``forget``: drop the entries of changed artifacts from the manifest, so the next run recomputes
    those steps (and, through their signatures, every step downstream); use it while no run writes there."""
    root = Path(run_dir)
    if not (root / RunStore.MANIFEST).is_file():
        raise TapirError(f"{root}: no {RunStore.MANIFEST} here (expected a tapir run directory)")
    # Opened as a follower would: it never deletes the temporaries of a run writing there right now.
    store = RunStore(root, rank=1)
    report = VerifyReport()
    for key, e in sorted(store.entries.items(), key=lambda kv: (kv[1].round, kv[1].finished_at)):
        report.artifacts += 1
        path = root / e.artifact
        bad: list[str] = []
        if not path.exists():
            bad.append(f"{e.artifact}: missing")
        else:
            digest, files = content_state(path)
            report.files += len(files)
            report.bytes_read += sum(f[0] for f in files.values())
            if e.files is not None:
                for name in sorted(e.files.keys() | files.keys()):
                    where = f"{e.artifact}/{name}" if path.is_dir() else e.artifact
                    if name not in files:
                        bad.append(f"{where}: removed")
                    elif name not in e.files:
                        bad.append(f"{where}: added")
                    elif files[name][2] != e.files[name][2]:
                        same = files[name][:2] == e.files[name][:2]
                        bad.append(f"{where}: content changed" + (" (size and mtime unchanged)" if same else ""))
            if digest != e.artifact_hash and not bad:
                bad.append(f"{e.artifact}: content changed (hash {digest}, committed {e.artifact_hash})")
        for line in bad:
            report.problems.append(f"step {key}: {line}")
        if bad:
            report.changed_steps.append(key)
    if forget and report.changed_steps:
        for key in report.changed_steps:
            store.entries.pop(key, None)
        store._save_manifest()
    return report
