"""A trained student shared by the runs that would train it identically (``steps.warmup.share``).

Every setting of an ablation grid starts from the same warm-up: same student, same warm-up set, same trainer,
same seed. Training it once per seed instead of once per run is what makes a grid of many settings affordable
(issue 19: the skills grid trains 3 warm-ups for its 24 runs), and it makes the paired comparison cleaner:
every setting of a seed starts from bytewise the same student.

The cache is content-addressed, like the oracle's: the key is the training step's own signature (student
and trainer config, epochs, seed, the content hashes of the initial weights and of the data) plus what else
decides the floats on a CPU (the torch version and its number of threads). A cache hit links the stored
checkpoint into the run (hard links) and returns the counts the training recorded (losses, steps, tokens), so
the run's summary and loss curve are the same as if it had trained. Runs that start together (a launcher's
parallel jobs, an array job on a shared filesystem) do not all train: a lock per key lets the first train
while the others wait and link its student. The code is not in the key: after
changing the training code, delete ``<paths.cache_dir>/students`` (as with the other caches).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tapir_exp.environment import kernel_env
from tapir_exp.files import atomic_dir, atomic_write_json, computed_once, stable_hash
from tapir_exp.student.models import link_tree

log = logging.getLogger("tapir")

COUNTS = "counts.json"
MODEL = "model"


def shared_key(signature: dict[str, Any]) -> str:
    """The cache key of a training step: its signature and what else decides the result on this machine."""
    import torch

    kernels = kernel_env()  # only when set, so that the keys of a default environment stay what they were
    return stable_hash({"signature": signature, "torch": torch.__version__, "threads": torch.get_num_threads(),
                        **({"kernels": kernels} if kernels else {})})


def shared_training(cache_dir: str | Path, name: str, signature: dict[str, Any],
                    compute: Callable[[Path], dict[str, Any]]) -> Callable[[Path], dict[str, Any]]:
    """``compute`` (fills a checkpoint directory, returns counts) behind the shared cache
    ``<cache_dir>/<name>-<key>``: a hit links the stored checkpoint, a miss trains and stores it."""

    def run(out_dir: Path) -> dict[str, Any]:
        entry, out_dir = Path(cache_dir) / f"{name}-{shared_key(signature)}", Path(out_dir)

        def stored() -> dict[str, Any] | None:
            return _link(entry, out_dir) if (entry / COUNTS).is_file() else None

        def train() -> dict[str, Any]:
            counts = compute(out_dir)
            with atomic_dir(entry) as tmp:
                link_tree(out_dir, tmp / MODEL)
                atomic_write_json(tmp / COUNTS, counts)
            return {**counts, "shared_to": entry.name}

        return computed_once(entry.with_name(f".{entry.name}.lock"), stored, train,
                             waiting=f"{name}: waiting for another run training the same student ({entry})")

    def _link(entry: Path, out_dir: Path) -> dict[str, Any]:
        link_tree(entry / MODEL, out_dir)
        counts = json.loads((entry / COUNTS).read_text(encoding="utf-8"))
        log.info("%s: the trained student of an earlier run with the same signature (%s)", name, entry)
        return {**counts, "shared_from": entry.name}

    return run
