"""Student generations shared by the runs that make the same call (``share_generations``).

Every setting of an ablation grid starts from the seed's shared warm-up (``steps.warmup.share``), so each
answers the same held-out set with the same student in round 0, and most answer the same pool with it in
round 1: the same call, made once per setting. With ``share_generations`` the first run's answers are stored
under ``<paths.cache_dir>/generations/<key>.jsonl`` and the others read them.

The key is the whole call — the student's content hash, every conversation in order, the generation config,
the torch version and thread count — not one prompt: batched generation pads each batch to its longest
prompt, so an answer depends on its batch, and only the whole call's answers are bytewise those a fresh
computation gives. Runs started together wait for the first (a lock per key). The code is not in the key:
after changing the generation code, delete ``<paths.cache_dir>/generations``. A student served elsewhere
(``generation=openai``) is keyed by the checkpoint directory the run names, as it is served.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tapir_exp.files import computed_once
from tapir_exp.records import read_jsonl, write_jsonl
from tapir_exp.student.shared import shared_key

log = logging.getLogger("tapir")


class SharedGenerations:
    """``generator`` (``generate(model_dir, conversations) -> [Generation]``) behind the shared cache.

    ``model_hash(model_dir)``: the student's content hash (the run store's recorded one: no re-read of the
    weights); ``config``: the generation config as plain data."""

    def __init__(self, generator: Any, cache_dir: str | Path, config: dict[str, Any],
                 model_hash: Callable[[Path], str]):
        self.inner, self.cache_dir = generator, Path(cache_dir)
        self.config, self.model_hash = config, model_hash
        self.hits = 0

    def key(self, model_dir: str | Path, conversations: list[list[dict[str, str]]]) -> str:
        # the call, plus what else decides the floats on this machine: the same rule as the shared students'
        return shared_key({"student": self.model_hash(Path(model_dir)), "conversations": conversations,
                           "generation": self.config})

    def generate(self, model_dir: str | Path, conversations: list[list[dict[str, str]]]) -> list[Any]:
        path = self.cache_dir / f"{self.key(model_dir, conversations)}.jsonl"

        def compute() -> list[Any]:
            out = self.inner.generate(model_dir, conversations)
            write_jsonl(path, [dataclasses.asdict(g) for g in out])
            return out

        return computed_once(path.with_name(f".{path.name}.lock"), lambda: self._read(path, len(conversations)),
                             compute, waiting=f"student generation: waiting for another run making the same call ({path})")

    def _read(self, path: Path, n: int) -> list[Any] | None:
        """The stored answers of this call, or None (none stored, or a file that is not a whole call's)."""
        from tapir_exp.student.generate import Generation

        if not path.is_file():
            return None
        try:
            gens = [Generation(**row) for row in read_jsonl(path)]
        except (ValueError, TypeError) as e:
            log.warning("student generation: %s is unreadable (%s); generating again", path, e)
            return None
        if len(gens) != n:
            log.warning("student generation: %s holds %d answers for a call of %d; generating again", path,
                        len(gens), n)
            return None
        self.hits += 1
        log.info("student generation: %d answers of an earlier run's identical call (%s)", n, path.name)
        return gens
