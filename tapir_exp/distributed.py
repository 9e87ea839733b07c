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
from typing import Any

from tapir_exp.errors import ConfigError

LEADER_FAILED = "leader_failed.json"


def launch_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process among the tasks SLURM (srun) or torchrun started for one job."""
    for rank_var, world_var in (("SLURM_PROCID", "SLURM_NTASKS"), ("RANK", "WORLD_SIZE")):
        if rank_var in os.environ and world_var in os.environ:
            return int(os.environ[rank_var]), int(os.environ[world_var])
    return 0, 1


def check_world(trainer_cfg: Any) -> None:
    """Refuse to start a job launched with a number of processes that is not ``trainer.devices`` x
    ``trainer.num_nodes``: Lightning would only notice at the first training, after round 0's oracle work."""
    _, world = launch_rank()
    if world == 1:  # one process: Lightning launches the others itself (or trains on one device)
        return
    devices, nodes = trainer_cfg.get("devices", 1), int(trainer_cfg.get("num_nodes", 1) or 1)
    if isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    elif not isinstance(devices, (int, str)):  # a list of device ids
        per_node = len(list(devices))
    elif str(devices) in ("-1", "auto"):
        import torch

        per_node = torch.cuda.device_count()
        if per_node == 0:  # cannot tell here; Lightning checks once it sees the devices
            return
    else:
        per_node = int(devices)
    if per_node * nodes != world:
        source = "SLURM_NTASKS" if "SLURM_NTASKS" in os.environ else "WORLD_SIZE"
        raise ConfigError("trainer.devices", f"this job runs {world} processes ({source}={world}) but "
                          f"trainer.devices={devices} x trainer.num_nodes={nodes} = {per_node * nodes}; launch one "
                          "task per device or set trainer.devices / trainer.num_nodes to match")


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
