"""Stop training cleanly on a pre-emption or timeout signal, then let the job's own handler act.

submitit signals a job that is about to time out or is pre-empted with its preemption signal (``USR2``, or
the one named by ``$SUBMITIT_PREEMPT_SIGNAL``) and SIGTERM, and its handler for the former checkpoints the
job's callable and requeues it. While a round trains, :class:`PreemptionGuard` replaces those handlers with
one that only records the signal; at the end of the current optimizer step every rank agrees on the stop
(an all-reduce of the signal number, so a rank that has not been signalled yet stops at the same step and no
collective is left half-entered), the training checkpoint is saved, and then the handler that was installed
before is called as if the signal had just arrived: submitit's requeues the job, Python's default exits with
128 + signal, an ignored signal lets training go on.

When the ranks are child processes of the job's process (``ddp_spawn``), the job's signal reaches that process
only: its handler passes the signal on to the ranks, which save and stop, and the job's process hands over when
``fit`` returns or raises (:meth:`PreemptionGuard.pending`). A signal that arrives after the last optimizer step
is handed over then too, instead of being lost with the handlers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

PREEMPT_ENV = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's own switch (submitit.core.job_environment)


def preemption_signals() -> list[signal.Signals]:
    """SIGTERM and submitit's preemption signal (USR2 unless ``$SUBMITIT_PREEMPT_SIGNAL`` names another)."""
    name = "SIG" + os.environ.get(PREEMPT_ENV, "USR2").upper().removeprefix("SIG")
    sig = getattr(signal, name, None)
    if not isinstance(sig, signal.Signals):
        raise ValueError(f"${PREEMPT_ENV}={os.environ[PREEMPT_ENV]!r} is not a signal name (expected e.g. USR2)")
    return list(dict.fromkeys([sig, signal.SIGTERM]))


class PreemptionGuard(L.Callback):
    """Lightning callback + context manager: install the recording handlers around ``trainer.fit``.

    ``save(trainer)`` writes the training checkpoint (a collective call under DeepSpeed: every rank calls it).
    """

    def __init__(self, save: Callable[[L.Trainer], None], signals: list[signal.Signals] | None = None):
        self.save = save
        self.signals = signals if signals is not None else preemption_signals()
        self.received: int = 0
        self.stopped_at: int | None = None  # optimizer step of the last signal checkpoint
        self._previous: dict[int, Any] = {}
        self._frame = None
        self._step_seen: int | None = None
        # set when the strategy starts the ranks as child processes of this one (ddp_spawn): pass signals on
        self.ranks_are_children = False
        self._owner = os.getpid()

    # ------------------------------------------------------------------ handlers
    def _record(self, signum: int, frame) -> None:
        self.received, self._frame = max(self.received, int(signum)), frame
        if self.ranks_are_children and os.getpid() == self._owner and self._previous.get(signum) != signal.SIG_IGN:
            for child in multiprocessing.active_children():  # the ranks (this process runs no data workers)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    def pending(self) -> int:
        """A signal recorded but not handed over yet (0: none): one this process passed on to its rank
        processes, or one that arrived after the last optimizer step."""
        return self.received

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return self  # Python delivers signals to the main thread only; or installed already
        for s in self.signals:
            self._previous[int(s)] = signal.getsignal(s)
            signal.signal(s, self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}

    def __getstate__(self) -> dict[str, Any]:
        # A spawned rank gets a copy without this process's handlers; it installs its own in setup().
        return {**self.__dict__, "_previous": {}, "_frame": None, "_spawned": True}

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if getattr(self, "_spawned", False):
            self.__enter__()

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if getattr(self, "_spawned", False):
            self.__exit__()

    # ------------------------------------------------------------------ the stop, at an optimizer step
    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._step_seen = trainer.global_step  # a resumed run starts at its checkpoint's step

    def agreed_signal(self, trainer: L.Trainer) -> int:
        """The signal every rank stops on (0: none). Collective when there are several ranks."""
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([self.received], dtype=torch.int64, device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            return int(flag.item())
        return self.received

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Only where an optimizer step ended (not between accumulated micro-batches): the same batches on
        # every rank, so the all-reduce below is entered by all of them or by none.
        if trainer.global_step == self._step_seen:
            return
        self._step_seen = trainer.global_step
        signum = self.agreed_signal(trainer)
        if not signum:
            return
        self.save(trainer)
        self.stopped_at = int(trainer.global_step)
        print(f"tapir: {signal.Signals(signum).name}: training checkpoint saved at optimizer step "
              f"{trainer.global_step}; handing over to the job's handler", file=sys.stderr, flush=True)
        self.received = 0
        self.hand_over(signum)
        # The handler chose to go on (SIG_IGN, submitit's SIGTERM bypass, a non-zero rank): so does training,
        # instead of Lightning ending the fit on the SIGTERM it also saw.
        trainer._signal_connector.received_sigterm = False

    def hand_over(self, signum: int) -> None:
        """Act on the signal as the handler installed before training would have."""
        previous = self._previous.get(signum, signal.SIG_DFL)
        if previous == signal.SIG_IGN:
            return
        if callable(previous):
            previous(signum, self._frame)  # submitit's: requeue (raises SystemExit) or log and return
            return
        sys.exit(128 + signum)  # SIG_DFL / unknown: terminate, with the status a shell reports for it
