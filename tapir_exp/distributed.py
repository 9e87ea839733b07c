"""Which process of a multi-process job this is.

Under SLURM with one task per GPU (``launchers/hydra/launcher/slurm_8gpu.yaml``, ``slurm_multinode.yaml``)
or under torchrun, every process runs the same ``tapir`` job. Only rank 0 (the leader) computes the
pipeline's steps and talks to the oracle; the other ranks follow the run store and join the one collective
step, training, where Lightning's SLURM/torchrun environment makes them one DDP/DeepSpeed world.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

LEADER_FAILED = "leader_failed.json"


def launch_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process among the tasks SLURM (srun) or torchrun started for one job."""
    for rank_var, world_var in (("SLURM_PROCID", "SLURM_NTASKS"), ("RANK", "WORLD_SIZE")):
        if rank_var in os.environ and world_var in os.environ:
            return int(os.environ[rank_var]), int(os.environ[world_var])
    return 0, 1


def job_id() -> str:
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID") or "local"


def mark_leader_failed(run_dir: str | Path, error: BaseException) -> None:
    """Tell the followers of this job that the leader is gone, so they stop waiting for it."""
    path = Path(run_dir) / LEADER_FAILED
    path.write_text(json.dumps({"job": job_id(), "error": f"{type(error).__name__}: {error}"[:2000],
                                "at": time.time()}))


def clear_leader_failed(run_dir: str | Path) -> None:
    (Path(run_dir) / LEADER_FAILED).unlink(missing_ok=True)


def leader_failure(run_dir: str | Path) -> str | None:
    """The leader's error if the leader of *this* job failed (a marker left by an earlier job is ignored)."""
    path = Path(run_dir) / LEADER_FAILED
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc.get("error", "unknown error") if doc.get("job") == job_id() else None
