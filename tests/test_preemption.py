"""The preemption signal inside training, with real signals in child processes: the stop is agreed across
DDP ranks (only one rank is signalled, both save at the same optimizer step), and after saving the handler
that was installed before training (submitit's, in a job) gets the signal instead of training exiting itself;
``$SUBMITIT_PREEMPT_SIGNAL`` picks the signal as it does for submitit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.test_student import REPO, tiny  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

CHILD = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from tests.test_student import CONVS, student_cfg, trainer_cfg
from tapir_exp.student.train import train_round
tiny, work, mode, sig = sys.argv[1], sys.argv[2], sys.argv[3], getattr(signal, sys.argv[4])

from tests.test_preemption import SignalOnce, SignalTheJob
if mode in ("handler", "ddp_job"):
    def previous(signum, frame):  # stands for submitit's handler: requeue = exit with its own code
        print(f"previous handler got {{signal.Signals(signum).name}}", flush=True)
        sys.exit(99)
    signal.signal(sig, previous)
extra = dict(strategy="ddp_spawn", devices=2) if mode.startswith("ddp") else {{}}
signal_it = SignalTheJob(sig) if mode == "ddp_job" else SignalOnce(1 if mode == "ddp" else 0, sig)
train_round(tiny, CONVS * 2, work + "/out", student_cfg=student_cfg(), work_dir=work, seed=0, callbacks=[signal_it],
            trainer_cfg=trainer_cfg(max_epochs=2, checkpoint_every_n_steps=1000, **extra))
print("finished without stopping", flush=True)
"""


class SignalOnce(L.Callback):
    """Signals its own process once, on one rank, at optimizer step 3 (it runs after the guard's check, so
    the guard acts at the next step). Importable: spawned DDP ranks unpickle it."""

    def __init__(self, rank: int, sig: int):
        self.rank, self.sig, self.sent = rank, int(sig), False

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3 and trainer.global_rank == self.rank and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.sig)


class SignalTheJob(L.Callback):
    """From rank 0 of a ddp_spawn job, at optimizer step 3, signals the job's process (the ranks' parent), as
    submitit's local executor or a scheduler that signals the job's main process does."""

    def __init__(self, sig: int):
        self.sig, self.sent = int(sig), False

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3 and trainer.global_rank == 0 and not self.sent:
            self.sent = True
            os.kill(os.getppid(), self.sig)


def _run(tiny, tmp_path, mode, sig, env=None):  # noqa: F811
    code = CHILD.format(repo=str(REPO))
    return subprocess.run([sys.executable, "-c", code, str(tiny), str(tmp_path), mode, sig], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _ckpt_step(tmp_path: Path) -> int:
    return int(torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)["global_step"])


def test_one_signalled_rank_stops_every_rank_at_the_same_step(tiny, tmp_path):  # noqa: F811
    proc = _run(tiny, tmp_path, "ddp", "SIGUSR2")
    saved = re.findall(r"SIGUSR2: training checkpoint saved at optimizer step (\d+)", proc.stderr)
    assert saved == ["4", "4"], proc.stderr[-3000:]  # both ranks, the same step (a lone rank would hang)
    assert _ckpt_step(tmp_path) == 4
    assert proc.returncode != 0 and "finished without stopping" not in proc.stdout  # default action: exit


def test_checkpoint_then_the_previous_handler_gets_the_configured_signal(tiny, tmp_path):  # noqa: F811
    proc = _run(tiny, tmp_path, "handler", "SIGUSR1", env={"SUBMITIT_PREEMPT_SIGNAL": "USR1"})
    assert proc.returncode == 99, proc.stderr[-3000:]  # the previous handler decided, not training
    assert "previous handler got SIGUSR1" in proc.stdout
    assert "SIGUSR1: training checkpoint saved at optimizer step 4" in proc.stderr
    assert _ckpt_step(tmp_path) == 4 and signal.getsignal(signal.SIGUSR1) is not None


def test_the_job_process_passes_its_signal_to_spawned_ranks_and_its_handler_decides(tiny, tmp_path):  # noqa: F811
    # ddp_spawn: the ranks are children of the job's process, and the job's signal reaches that process only.
    # It passes the signal on; both ranks save at one step and stop; then the job's own handler gets it.
    proc = _run(tiny, tmp_path, "ddp_job", "SIGUSR2")
    saved = re.findall(r"SIGUSR2: training checkpoint saved at optimizer step (\d+)", proc.stderr)
    assert len(saved) == 2 and saved[0] == saved[1], proc.stderr[-3000:]
    assert _ckpt_step(tmp_path) == int(saved[0]) and int(saved[0]) < 12  # 12: the whole round (2 epochs x 6)
    assert proc.returncode == 99 and "previous handler got SIGUSR2" in proc.stdout, proc.stderr[-3000:]
    assert "finished without stopping" not in proc.stdout
