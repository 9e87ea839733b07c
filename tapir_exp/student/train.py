"""One round of supervised fine-tuning with Lightning: init checkpoint + conversations -> new checkpoint.

Exact resume: a checkpoint (``work_dir/last.ckpt``) is written every ``checkpoint_every_n_steps`` and, at
the end of the current optimizer step, on SIGTERM or submitit's preemption signal (``preemption.py``: the
ranks agree on the step, then the job's own handler requeues); the next call with the same work_dir
continues from it, skipping the batches of the interrupted epoch that were already trained on, so an
interrupted round ends with the same number of optimizer steps as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from tapir_exp.distributed import launch_rank
from tapir_exp.student.data import LengthGroupedBatches, collate, encode, pack
from tapir_exp.student.preemption import PreemptionGuard
from tapir_exp.student.strategies import (
    build_optimizer,
    build_strategy,
    deepspeed_stage,
    hf_model_from_zero_checkpoint,
)

CKPT = "last.ckpt"
LOSSES = "losses.jsonl"


@dataclass
class TrainSummary:
    steps: int
    tokens: int
    first_loss: float | None
    final_loss: float | None
    losses: list[float] = field(default_factory=list)
    padding_efficiency: float = 1.0
    resumed_from: int | None = None


class SFTModule(L.LightningModule):
    def __init__(self, model_dir: str, examples: list[dict[str, list[int]]], pad_id: int, trainer_cfg: dict[str, Any],
                 lora: dict[str, Any] | None, gradient_checkpointing: bool, seed: int, total_steps: int,
                 log_path: str):
        super().__init__()
        self.model_dir, self.examples, self.pad_id = model_dir, examples, pad_id
        self.tc, self.lora, self.gc, self.total_steps, self.log_path = trainer_cfg, lora, gradient_checkpointing, \
            total_steps, log_path
        self.sampler = LengthGroupedBatches([len(e["input_ids"]) for e in examples], int(trainer_cfg["batch_size"]),
                                            seed, group=bool(trainer_cfg.get("group_by_length", True)))
        self.model = None
        self._done_in_epoch = 0

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        if self.gc:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if self.lora and self.lora.get("enabled"):
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=self.lora["r"], lora_alpha=self.lora["alpha"],
                                                     lora_dropout=self.lora["dropout"],
                                                     target_modules=list(self.lora["target_modules"]),
                                                     task_type="CAUSAL_LM"))
        self.model = model

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.examples, batch_sampler=self.sampler,
                                           collate_fn=lambda b: collate(b, self.pad_id),
                                           num_workers=int(self.tc.get("num_workers", 0)))

    def training_step(self, batch, batch_idx):
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                         position_ids=batch.get("position_ids"), use_cache=False)
        self.log("train/loss", out.loss.detach(), prog_bar=True, on_step=True, batch_size=batch["input_ids"].shape[0])
        return {"loss": out.loss, "tokens": int((batch["labels"] != -100).sum())}

    def on_train_epoch_start(self) -> None:
        self._done_in_epoch = self._resume_done if getattr(self, "_resume_epoch", None) == self.current_epoch else 0
        self._resume_epoch = None

    def record_batch(self, outputs) -> None:
        """Called by :class:`Checkpointing` before it may save, so a checkpoint always counts its own batch."""
        self._done_in_epoch += 1
        if self.trainer.is_global_zero and outputs is not None:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps({"step": int(self.trainer.global_step), "loss": float(outputs["loss"]),
                                     "tokens": int(outputs["tokens"])}) + "\n")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tapir_progress"] = {"epoch": int(self.current_epoch), "done": int(self._done_in_epoch)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        p = checkpoint.get("tapir_progress") or {}
        self._resume_epoch, self._resume_done = p.get("epoch"), int(p.get("done", 0))
        if p:
            self.sampler.resume(int(p["epoch"]), self._resume_done)

    def configure_optimizers(self):
        opt = build_optimizer([p for p in self.model.parameters() if p.requires_grad], self.tc)
        warm = max(0, int(self.total_steps * float(self.tc.get("warmup_ratio", 0.0))))
        floor = float(self.tc.get("min_lr_ratio", 0.0))
        total = max(1, self.total_steps)

        def factor(step: int) -> float:  # linear warm-up, cosine decay to min_lr_ratio
            if step < warm:
                return (step + 1) / (warm + 1)
            t = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Checkpointing(L.Callback):
    """Atomic ``last.ckpt`` every n optimizer steps (on a stop signal: :class:`PreemptionGuard`)."""

    def __init__(self, path: Path, every_n_steps: int):
        self.path, self.every = path, max(1, int(every_n_steps))

    def save(self, trainer: L.Trainer) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            if self.path.is_dir():  # DeepSpeed writes checkpoint directories
                shutil.rmtree(self.path)
            os.replace(tmp, self.path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.record_batch(outputs)
        if trainer.global_step and trainer.global_step % self.every == 0 and \
                getattr(self, "_last", None) != trainer.global_step:
            self._last = trainer.global_step
            self.save(trainer)


def train_round(init_dir: str | Path, conversations: list[list[dict[str, str]]], out_dir: str | Path, *,
                student_cfg: DictConfig, trainer_cfg: DictConfig, work_dir: str | Path, seed: int,
                max_epochs: int | None = None, callbacks: list[L.Callback] | None = None) -> TrainSummary:
    from transformers import AutoTokenizer

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(init_dir)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    examples = encode(tok, conversations, int(student_cfg.max_length))
    if not examples:
        raise ValueError("no training example left after tokenisation (all answers empty or cut off)")
    tc = OmegaConf.to_container(trainer_cfg, resolve=True)
    if tc.get("packing"):
        examples = pack(examples, int(tc.get("pack_length") or student_cfg.max_length), seed)
    lora = OmegaConf.to_container(student_cfg.lora, resolve=True) if student_cfg.get("lora") else None
    epochs = int(max_epochs if max_epochs is not None else tc["max_epochs"])
    accum = int(tc.get("accumulate_grad_batches", 1))
    batches = math.ceil(len(examples) / int(tc["batch_size"]))
    total = int(tc["max_steps"]) if int(tc.get("max_steps", -1)) > 0 else math.ceil(batches / accum) * epochs
    L.seed_everything(seed, workers=True, verbose=False)
    module = SFTModule(str(init_dir), examples, pad_id, tc, lora, bool(student_cfg.get("gradient_checkpointing")),
                       seed, total, str(work_dir / LOSSES))
    if deepspeed_stage(trainer_cfg) != 3:
        # Built here (not lazily in the workers) so that spawned DDP workers hand their trained weights back
        # into this process's module; ZeRO-3 builds it inside its sharding context instead.
        module.configure_model()
    ckpt = Checkpointing(work_dir / CKPT, int(tc.get("checkpoint_every_n_steps", 50)))
    guard = PreemptionGuard(ckpt.save)  # after ckpt: a signal checkpoint counts its own batch
    resumed_from = _checkpoint_step(work_dir / CKPT)
    if (work_dir / LOSSES).exists() and launch_rank()[0] == 0:
        # Keep the losses of the steps the checkpoint holds; later ones will be trained (and logged) again.
        keep = [line for line in (work_dir / LOSSES).read_text().splitlines()
                if line.strip() and resumed_from is not None and json.loads(line)["step"] <= resumed_from]
        (work_dir / LOSSES).write_text("".join(f"{line}\n" for line in keep))
    trainer = L.Trainer(accelerator=tc["accelerator"], devices=tc["devices"], num_nodes=tc.get("num_nodes", 1),
                        strategy=build_strategy(trainer_cfg), precision=tc["precision"], max_epochs=epochs,
                        max_steps=int(tc.get("max_steps", -1)), accumulate_grad_batches=accum,
                        gradient_clip_val=tc.get("gradient_clip_val") if deepspeed_stage(trainer_cfg) is None else None,
                        logger=False, enable_checkpointing=False, callbacks=[ckpt, guard, *(callbacks or [])],
                        use_distributed_sampler=False,
                        enable_progress_bar=sys.stderr.isatty(), enable_model_summary=False,
                        default_root_dir=str(work_dir), log_every_n_steps=int(tc.get("log_every_n_steps", 5)))
    with guard:
        trainer.fit(module, ckpt_path=str(work_dir / CKPT) if resumed_from is not None else None)
    _save_model(module, tok, Path(out_dir), lora, trainer, trainer_cfg, work_dir)
    rows = [json.loads(line) for line in (work_dir / LOSSES).read_text().splitlines() if line.strip()] \
        if (work_dir / LOSSES).exists() else []
    losses = [r["loss"] for r in rows]
    # Spawned DDP workers do not hand their step counter back; the rank-0 log has it.
    steps = max(int(trainer.global_step), int(rows[-1]["step"]) if rows else 0)
    return TrainSummary(steps=steps, tokens=sum(r["tokens"] for r in rows),
                        first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
                        losses=losses, padding_efficiency=module.sampler.padding_efficiency(), resumed_from=resumed_from)


def _checkpoint_step(path: Path) -> int | None:
    if not path.exists():
        return None
    if path.is_dir():  # DeepSpeed: the step is in the client state; any directory means "resume"
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    return int(state.get("global_step", 0))


def _save_model(module: SFTModule, tok: Any, out_dir: Path, lora: dict | None, trainer: L.Trainer,
                trainer_cfg: DictConfig, work_dir: Path) -> None:
    final = work_dir / "final.ckpt"
    zero3 = deepspeed_stage(trainer_cfg) == 3
    if zero3:
        # ZeRO-3 shards the weights: every rank writes its shard (a collective call), rank 0 consolidates.
        trainer.save_checkpoint(final)
    if not trainer.is_global_zero:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    model = hf_model_from_zero_checkpoint(final, module.model_dir, work_dir) if zero3 else module.model
    if lora and lora.get("enabled"):
        if lora.get("merge", True):
            model = model.merge_and_unload()
        else:
            model.save_pretrained(out_dir)  # adapter only; the base is the previous round's checkpoint
            (out_dir / "base_model").symlink_to(Path(module.model_dir).resolve(), target_is_directory=True)
            tok.save_pretrained(out_dir)
            return
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
