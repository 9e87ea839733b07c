"""A multi-process job as SLURM (one task per GPU) or torchrun starts it: every process runs `tapir`; rank 0
computes the steps and calls the oracle, rank 1 follows the run store and joins training, and the two train
as one DDP world (gloo on the CPU). Also: a follower stops when the leader fails instead of waiting forever.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tapir_exp.testing.openai_server import FakeOpenAIServer
from tests.support_pipeline import TAPIR, fast_overrides, free_port, responder, tapir_env


def _launch(args: list[str], root, rank: int, world: int, port: int) -> subprocess.Popen:
    env = tapir_env(root)
    # what torchrun exports (SLURM's srun exports SLURM_PROCID/SLURM_NTASKS, read the same way)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), TORCHELASTIC_RUN_ID=f"test-{port}", GROUP_RANK="0",
               LOCAL_WORLD_SIZE=str(world))
    return subprocess.Popen(TAPIR + args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.slow
def test_two_rank_job_has_one_leader_and_trains_as_one_ddp_world(tmp_path):
    with FakeOpenAIServer(responder=responder) as srv:
        args = fast_overrides(srv.base_url) + ["trainer.devices=2", "trainer.strategy=ddp"]
        port = free_port()
        follower = _launch(args, tmp_path, 1, 2, port)  # the follower may well start first
        leader = _launch(args, tmp_path, 0, 2, port)
        out0, err0 = leader.communicate(timeout=900)
        out1, err1 = follower.communicate(timeout=300)
        assert leader.returncode == 0, err0[-3000:]
        assert follower.returncode == 0, err1[-3000:]
        runs = list((tmp_path / "outputs").glob("*/*/summary.json"))
        assert len(runs) == 1
        run = runs[0].parent
        usage = json.loads((run / "oracle_usage.json").read_text())
        # every request the server saw was the leader's: the follower called no model
        assert usage["total"]["requests"] == len(srv.requests) > 0
    assert "pool / judged / hard" in out0 and "pool / judged / hard" not in out1  # only the leader reports
    summary = json.loads((run / "summary.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())["steps"]
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert [e["step"] for e in manifest].count("student") == 3 and len({e["round"] for e in manifest}) == 3
    # one DDP world: each rank takes every other batch, so an epoch has half the optimizer steps
    r1 = next(e for e in manifest if e["step"] == "student" and e["round"] == 1)
    batches_single = -(-summary["rounds"][1]["round_size"] // 4)  # batch_size 4, one process
    assert r1["counts"]["steps"] == 2 * (batches_single // 2)  # student.max_epochs=2
    assert not list(run.rglob(".student-follower-*"))  # the follower's private output was discarded


@pytest.mark.slow
def test_follower_stops_when_the_leader_fails(tmp_path):
    with FakeOpenAIServer(fault_when=lambda body: "500") as srv:  # every oracle call fails
        args = fast_overrides(srv.base_url) + ["oracle.limits.max_retries=0", "trainer.devices=2"]
        port = free_port()
        follower = _launch(args, tmp_path, 1, 2, port)
        leader = _launch(args, tmp_path, 0, 2, port)
        _, err0 = leader.communicate(timeout=300)
        _, err1 = follower.communicate(timeout=120)
    assert leader.returncode != 0
    assert follower.returncode != 0 and "the leader (rank 0) failed" in err1
