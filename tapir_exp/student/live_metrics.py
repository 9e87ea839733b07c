"""Per-optimizer-step training metrics, streamed while a round trains (not after it ends).

:class:`LiveMetrics` is a Lightning callback: at the end of every optimizer step (rank 0 only) it hands one
row to ``sink(round, step, metrics)`` — the pipeline's tracker (``log_train_step``), so W&B, the CSV file
and ``metrics.jsonl`` get the curves of a multi-hour round as it runs:

- ``loss``: mean training loss over the step's micro-batches (rank 0's share of the batch);
- ``lr``: the learning rate the step used;
- ``grad_norm``: global L2 norm of the gradients before clipping (DeepSpeed: its engine's global norm);
- ``tokens_per_s``: non-pad tokens per second over all ranks (rank 0's count x world size);
- ``nonpad_fraction``: non-pad share of the padded batch (how well length grouping / packing works);
- ``gpu_mem_gb``: peak GPU memory allocated during the step, where there is a GPU;
- ``progress``: ``round + step / total steps``, a monotone x axis across rounds and resumes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

Sink = Callable[[int, int, dict[str, float]], None]


class LiveMetrics(L.Callback):
    def __init__(self, sink: Sink | None, rnd: int):
        self.sink, self.round = sink, int(rnd)
        self._reset()
        self._t: float | None = None
        self._step_seen: int | None = None
        self._lr: float | None = None
        self._grad_norm: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Spawned DDP workers get a copy without the tracker (a W&B run does not cross processes); the
        # process that owns the tracker logs.
        return {**self.__dict__, "sink": None}

    def _reset(self) -> None:
        self._loss_sum, self._batches, self._tokens, self._positions = 0.0, 0, 0, 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_seen = trainer.global_step
        self._t = time.perf_counter()
        self._reset()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        self._lr = float(optimizer.param_groups[0]["lr"])
        grads = [p.grad.detach() for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self._grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float())
                                                                           for g in grads])))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if outputs is not None and "loss" in outputs:
            self._loss_sum += float(outputs["loss"])
            self._batches += 1
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if mask is not None:
            self._tokens += int(mask.sum())
            self._positions += int(mask.numel())
        if trainer.global_step == self._step_seen:
            return  # between accumulated micro-batches
        self._step_seen = trainer.global_step
        now = time.perf_counter()
        seconds, self._t = now - (self._t or now), now
        if trainer.is_global_zero and self.sink is not None:
            self.sink(self.round, int(trainer.global_step), self._row(trainer, seconds))
        self._reset()
        self._grad_norm = None

    def _row(self, trainer: L.Trainer, seconds: float) -> dict[str, float]:
        total = max(1, int(trainer.estimated_stepping_batches)) if math.isfinite(trainer.estimated_stepping_batches) \
            else max(1, trainer.global_step)
        row: dict[str, float] = {"progress": round(self.round + min(1.0, trainer.global_step / total), 6)}
        if self._batches:
            row["loss"] = self._loss_sum / self._batches
        if self._lr is not None:
            row["lr"] = self._lr
        grad_norm = self._grad_norm
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if grad_norm is None and engine is not None and engine.get_global_grad_norm() is not None:
            grad_norm = float(engine.get_global_grad_norm())
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        if self._positions:
            row["nonpad_fraction"] = self._tokens / self._positions
            row["tokens_per_s"] = self._tokens * trainer.world_size / max(seconds, 1e-9)
        if torch.cuda.is_available():
            row["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        return row
