"""A Hydra callback (``hydra.callbacks``) that slows training down in the job process, so that a test's
submitit timeout lands in the middle of a round however fast or loaded the machine is. Nothing in tapir
knows about it: Hydra instantiates it and calls ``on_job_start`` inside the (submitit) job before the task.

    +hydra.callbacks.pace._target_=tests.support_pacing.PaceTraining +hydra.callbacks.pace.seconds=1.0

Only the first ``attempts`` attempts of a job are paced (counted in ``<run_dir>/.paced_attempts``), so a
requeued job can finish inside its wall time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


class PaceTraining(Callback):
    def __init__(self, seconds: float = 0.05, attempts: int = 1):
        self.seconds, self.attempts = float(seconds), int(attempts)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        counter = Path(config.paths.run_dir) / ".paced_attempts"
        counter.parent.mkdir(parents=True, exist_ok=True)
        attempt = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(attempt))
        if attempt > self.attempts:
            return
        import tapir_exp.student.train as train

        seconds, original = self.seconds, train.Checkpointing.on_train_batch_end

        def paced(self, *args, **kw):  # sleeps per optimizer step: idle wall time, no CPU
            time.sleep(seconds)
            return original(self, *args, **kw)

        train.Checkpointing.on_train_batch_end = paced
