"""File helpers every layer uses: content hashes, stat fingerprints and atomic writes.

Hashes here name artifacts in step signatures and run manifests, so their values are part of every run
directory on disk: :func:`stable_hash` and :func:`content_state` must keep giving the same digests for the
same content. Every write goes to a temporary name in the same directory (``.<name>.<random>.tmp``) and is
renamed into place, so a process killed mid-write leaves either the old file or none, never half of one
(:class:`tapir_exp.store.RunStore` removes such leftovers when it opens a run directory).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")


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
    return content_state(path)[0]


def _files(path: Path) -> list[tuple[str, Path]]:
    """The files of an artifact as (name recorded in the manifest, path): itself, or a directory's files."""
    if path.is_dir():
        return [(str(q.relative_to(path)), q) for q in sorted(path.rglob("*")) if q.is_file()]
    return [(path.name, path)]


def fingerprint(path: str | os.PathLike) -> dict[str, list[int]]:
    """``{file: [size, mtime_ns]}`` for an artifact (a file or every file of a directory): stats only, no read."""
    out = {}
    for name, p in _files(Path(path)):
        st = p.stat()
        out[name] = [st.st_size, st.st_mtime_ns]
    return out


def content_state(path: str | os.PathLike) -> tuple[str, dict[str, list]]:
    """One read of every file: the artifact's hash (as :func:`file_hash`) and ``{file: [size, mtime_ns,
    sha256]}`` (the stats taken before the read, so a write racing the hash shows up as a stats change)."""
    path = Path(path)
    h = hashlib.sha256()
    files: dict[str, list] = {}
    for name, p in _files(path):
        st = p.stat()
        digest = _digest_file(p)
        if path.is_dir():
            h.update(name.encode())
        h.update(digest.encode())
        files[name] = [st.st_size, st.st_mtime_ns, digest]
    return h.hexdigest()[:16], files


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, newline: str | None = None) -> Iterator[IO[str]]:
    """A text file to write ``path`` through: a temporary sibling, synced and renamed into place when the
    block ends without an error, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


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


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, waiting: str | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block; another process asking
    for it waits, after logging ``waiting`` once. The OS releases it when its holder dies (killed, preempted),
    so a crashed run never blocks the next. POSIX ``flock``; where there is none, no lock is taken."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                import logging

                logging.getLogger("tapir").info(waiting)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def computed_once(lock: str | os.PathLike, stored: Callable[[], T | None], compute: Callable[[], T],
                  waiting: str | None = None) -> T:
    """``stored()`` when it finds a result, else ``compute()`` (which stores it) - once across processes: runs
    that start together would all miss and all compute, so the first takes ``lock`` and computes while the
    others wait for it and then find its result (looked up again once the lock is held)."""
    found = stored()
    if found is not None:
        return found
    with exclusive_lock(lock, waiting=waiting):
        found = stored()
        return found if found is not None else compute()
