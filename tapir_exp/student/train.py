"""One round of supervised fine-tuning with Lightning: init checkpoint + conversations -> new checkpoint.

Exact resume: a checkpoint (``work_dir/last.ckpt``) is written every ``checkpoint_every_n_steps`` and, at
the end of the current optimizer step, on SIGTERM or submitit's preemption signal (``preemption.py``: the
ranks agree on the step, then the job's own handler requeues); the next call with the same work_dir
continues from it, skipping the batches of the interrupted epoch that were already trained on, so an
interrupted round ends with the same number of optimizer steps as an uninterrupted one.
"""

from __future__ import annotations

import gc
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
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf

from tapir_exp.distributed import launch_rank
from tapir_exp.student.data import LengthGroupedBatches, collate, encode, pack
from tapir_exp.student.models import load_causal_lm, preload_model_class
from tapir_exp.student.preemption import PreemptionGuard
from tapir_exp.student.strategies import (
    build_optimizer,
    build_strategy,
    deepspeed_stage,
    export_dtype,
    gathered_16bit_state_dict,
    hf_model_from_state,
    hf_zero3_config,
    param_dtype,
    release_engine,
    unwrap_state_dict,
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
    lrs: list[float] = field(default_factory=list)
    # what one optimizer step sees, summed over all processes (compare with a paper's "batch size")
    effective_batch: dict[str, Any] = field(default_factory=dict)
    data: dict[str, int] = field(default_factory=dict)  # encode()'s counts: answers cut, examples dropped


class WholeAccumulationBatches(LengthGroupedBatches):
    """Under DeepSpeed, each rank's batches per epoch are cut to a multiple of ``accumulate_grad_batches``.

    DeepSpeed counts micro-steps across epochs and steps its optimizer on every ``accumulation``-th one, while
    Lightning ends an epoch's partial accumulation window without counting a step (``handles_gradient_
    accumulation``): with a remainder the two drift apart and the LR schedule stops matching the updates.
    At most ``accumulation - 1`` batches per rank and epoch are left out (a different few each epoch)."""

    def __init__(self, *args: Any, multiple_of: int = 1, **kw: Any):
        super().__init__(*args, **kw)
        self.multiple_of = max(1, int(multiple_of))

    def batches(self, epoch: int) -> list[list[int]]:
        out = super().batches(epoch)
        _, world = self._world()
        unit = world * self.multiple_of
        return out[: len(out) // unit * unit or len(out)]

    def __len__(self) -> int:
        _, world = self._world()
        return max(1, len(self.batches(0)) // world)


def build_student_model(model_dir: str, dtype: Any, attn_implementation: str = "sdpa",
                        zero3_config: dict[str, Any] | None = None, gradient_checkpointing: bool = False,
                        lora: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The student for training, and the object that must stay alive while it trains (ZeRO-3's
    ``HfDeepSpeedConfig``, else ``None``). Under ZeRO-3 call it inside ``deepspeed.zero.Init`` (Lightning's
    ``model_sharded_context`` does): transformers then loads the weights into the partitioned parameters."""
    keep = hf_zero3_config(zero3_config) if zero3_config else None
    model = load_causal_lm(model_dir, dtype, attn_implementation)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if lora and lora.get("enabled"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                 target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM"))
    return model, keep


class SFTModule(L.LightningModule):
    def __init__(self, model_dir: str, examples: list[dict[str, list[int]]], pad_id: int, trainer_cfg: dict[str, Any],
                 lora: dict[str, Any] | None, gradient_checkpointing: bool, seed: int, log_path: str,
                 dtype: Any = torch.float32, attn_implementation: str = "sdpa", accumulate_multiple_of: int = 1):
        super().__init__()
        self.model_dir, self.examples, self.pad_id = model_dir, examples, pad_id
        self.tc, self.lora, self.gc, self.log_path = trainer_cfg, lora, gradient_checkpointing, log_path
        self.param_dtype, self.attn = dtype, attn_implementation
        self.sampler = WholeAccumulationBatches([len(e["input_ids"]) for e in examples], int(trainer_cfg["batch_size"]),
                                                seed, group=bool(trainer_cfg.get("group_by_length", True)),
                                                multiple_of=accumulate_multiple_of)
        self.model = None
        self._hf_ds = None  # ZeRO-3: transformers' HfDeepSpeedConfig, alive while the model trains
        self._done_in_epoch = 0

    def configure_model(self) -> None:
        if self.model is not None:
            return
        strategy = self._trainer.strategy if self._trainer is not None else None
        zero3 = strategy.config if getattr(strategy, "zero_stage_3", False) else None
        self.model, self._hf_ds = build_student_model(self.model_dir, self.param_dtype, self.attn, zero3, self.gc, self.lora)
        # from_pretrained returns the model in eval mode and Lightning (>= 2.2) keeps the mode it is given
        # (it warned "Found N module(s) in eval mode" every round): train mode turns on dropout where the
        # config has some and transformers' gradient checkpointing, which it applies only while training.
        self.model.train()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.examples, batch_sampler=self.sampler,
                                           collate_fn=lambda b: collate(b, self.pad_id),
                                           num_workers=int(self.tc.get("num_workers", 0)))

    def training_step(self, batch, batch_idx):
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                         position_ids=batch.get("position_ids"), use_cache=False)
        self.log("train/loss", out.loss.detach(), prog_bar=True, on_step=True, batch_size=batch["input_ids"].shape[0])
        # the LR this step's update uses (Lightning steps the scheduler before on_train_batch_end runs)
        lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])
        return {"loss": out.loss, "tokens": int((batch["labels"] != -100).sum()), "lr": lr}

    def on_train_epoch_start(self) -> None:
        self._done_in_epoch = self._resume_done if getattr(self, "_resume_epoch", None) == self.current_epoch else 0
        self._resume_epoch = None

    def record_batch(self, outputs) -> None:
        """Called by :class:`Checkpointing` before it may save, so a checkpoint always counts its own batch."""
        self._done_in_epoch += 1
        if self.trainer.is_global_zero and outputs is not None:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps({"step": int(self.trainer.global_step), "loss": float(outputs["loss"]),
                                     "tokens": int(outputs["tokens"]), "lr": outputs["lr"]}) + "\n")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tapir_progress"] = {"epoch": int(self.current_epoch), "done": int(self._done_in_epoch)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        p = checkpoint.get("tapir_progress") or {}
        self._resume_epoch, self._resume_done = p.get("epoch"), int(p.get("done", 0))
        if p:
            self.sampler.resume(int(p["epoch"]), self._resume_done)

    def configure_optimizers(self):
        opt = build_optimizer([p for p in self.model.parameters() if p.requires_grad], self.tc)
        # The trainer's own count of optimizer steps: per-rank batches (our sampler splits them over the
        # world), accumulation, epochs and max_steps — not len(examples) / batch_size of one process.
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = max(0, int(total * float(self.tc.get("warmup_ratio", 0.0))))
        floor = float(self.tc.get("min_lr_ratio", 0.0))

        def factor(step: int) -> float:  # linear warm-up, then cosine decay reaching min_lr_ratio on the last step
            if step < warm:
                return (step + 1) / (warm + 1)
            t = min(1.0, (step - warm) / max(1, total - 1 - warm))
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
    """Train, write the HF checkpoint, and give the devices back: when this returns, no trainer, engine, model or
    optimizer of the round is left alive (the next step may start a vLLM worker on the same GPUs)."""
    from tapir_exp.console import adopt_lightning_console

    adopt_lightning_console()  # Lightning's lines once, through the run's console filter and tapir.log
    try:
        return _train_round(init_dir, conversations, out_dir, student_cfg=student_cfg, trainer_cfg=trainer_cfg,
                            work_dir=work_dir, seed=seed, max_epochs=max_epochs, callbacks=callbacks)
    finally:
        # The trainer, the module and the engine reference each other: only a collection frees them, and with
        # them the GPU memory their tensors hold (returned to the driver by empty_cache, so vLLM sees it free).
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _train_round(init_dir: str | Path, conversations: list[list[dict[str, str]]], out_dir: str | Path, *,
                 student_cfg: DictConfig, trainer_cfg: DictConfig, work_dir: str | Path, seed: int,
                 max_epochs: int | None, callbacks: list[L.Callback] | None) -> TrainSummary:
    from transformers import AutoTokenizer

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(init_dir)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    data_counts: dict[str, int] = {}
    examples = encode(tok, conversations, int(student_cfg.max_length), data_counts)
    if not examples:
        raise ValueError("no training example left after tokenisation (all answers empty or cut off)")
    n_examples, n_tokens = len(examples), sum(len(e["input_ids"]) for e in examples)
    tc = OmegaConf.to_container(trainer_cfg, resolve=True)
    if tc.get("packing"):
        examples = pack(examples, int(tc.get("pack_length") or student_cfg.max_length), seed)
    lora = OmegaConf.to_container(student_cfg.lora, resolve=True) if student_cfg.get("lora") else None
    epochs = int(max_epochs if max_epochs is not None else tc["max_epochs"])
    accum = int(tc.get("accumulate_grad_batches", 1))
    stage = deepspeed_stage(trainer_cfg)
    L.seed_everything(seed, workers=True, verbose=False)
    module = SFTModule(str(init_dir), examples, pad_id, tc, lora, bool(student_cfg.get("gradient_checkpointing")),
                       seed, str(work_dir / LOSSES), dtype=param_dtype(trainer_cfg),
                       attn_implementation=str(student_cfg.get("attn_implementation") or "sdpa"),
                       accumulate_multiple_of=accum if stage is not None else 1)
    if stage == 3:
        preload_model_class(init_dir)  # before Lightning enters zero.Init (see preload_model_class)
    else:
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
    guard.ranks_are_children = isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)
    with guard:
        try:
            trainer.fit(module, ckpt_path=str(work_dir / CKPT) if resumed_from is not None else None)
        finally:
            # a signal this process passed on to its rank processes (they saved, then exited on it), or one
            # after the last step: the job's handler decides now, before a round's result is written
            if guard.pending():
                guard.hand_over(guard.pending())
    try:
        _save_model(module, tok, Path(out_dir), lora, trainer, trainer_cfg)
    finally:
        _release(trainer, module)
    rows = [json.loads(line) for line in (work_dir / LOSSES).read_text().splitlines() if line.strip()] \
        if (work_dir / LOSSES).exists() else []
    losses = [r["loss"] for r in rows]
    # Spawned DDP workers do not hand their step counter back; the rank-0 log has it.
    steps = max(int(trainer.global_step), int(rows[-1]["step"]) if rows else 0)
    world = int(trainer.world_size)
    batch = _effective_batch(len(examples), n_examples, n_tokens, int(tc["batch_size"]), accum, world,
                             stage is not None)
    return TrainSummary(steps=steps, tokens=sum(r["tokens"] for r in rows),
                        first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
                        losses=losses, padding_efficiency=module.sampler.padding_efficiency(), resumed_from=resumed_from,
                        lrs=[r["lr"] for r in rows if "lr" in r], effective_batch=batch,
                        data=data_counts)


def _effective_batch(rows: int, examples: int, tokens: int, batch_size: int, accum: int, world: int,
                     whole_windows: bool) -> dict[str, Any]:
    """Per optimizer step, over all processes: rows (sequences, or packed rows), examples and tokens (prompt +
    answer, padding excluded) — averaged over an epoch, which is exact for rows and close for the others."""
    per_rank = max(1, math.ceil(rows / batch_size) // world)
    if whole_windows:
        per_rank = per_rank // accum * accum or per_rank
    steps = max(1, math.ceil(per_rank / accum))
    return {"world_size": world, "rows_per_step": batch_size * accum * world, "optimizer_steps_per_epoch": steps,
            "examples_per_step": round(examples / steps, 2), "tokens_per_step": round(tokens / steps, 1)}


def _checkpoint_step(path: Path) -> int | None:
    """The optimizer step a resumable checkpoint holds (``None``: no checkpoint). Memory-mapped, so the
    weights in the file are not read."""
    if not path.exists():
        return None
    if path.is_dir():
        # DeepSpeed: Lightning's checkpoint dict (global_step included) is the engine's client state, stored in
        # the model-states file of model-parallel rank 0 under the tag Lightning saves with ("checkpoint").
        tag = (path / "latest").read_text().strip() if (path / "latest").is_file() else "checkpoint"
        files = sorted((path / tag).glob("*mp_rank_00_model_states.pt"))
        if not files:
            raise FileNotFoundError(f"{path}: a DeepSpeed checkpoint directory without {tag}/*mp_rank_00_model_states.pt")
        path = files[0]
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return int(state.get("global_step", 0))


def _save_model(module: SFTModule, tok: Any, out_dir: Path, lora: dict | None, trainer: L.Trainer,
                trainer_cfg: DictConfig) -> None:
    engine = trainer.strategy.deepspeed_engine if deepspeed_stage(trainer_cfg) is not None else None
    module._hf_ds = None  # rank 0 may build a plain model next: transformers must not take its ZeRO-3 path
    write_round_checkpoint(module.model, tok, out_dir, lora, base_dir=module.model_dir,
                           dtype=export_dtype(trainer_cfg), engine=engine, rank0=trainer.is_global_zero)


def write_round_checkpoint(model: Any, tok: Any, out_dir: Path, lora: dict | None, *, base_dir: str | Path,
                           dtype: Any, engine: Any = None, rank0: bool = True) -> None:
    """The round-end HF directory, written by rank 0 in ``dtype`` (the training dtype).

    ZeRO-3 (``engine`` partitions the weights): DeepSpeed gathers the 16-bit weights (a collective call: every
    rank must get here) into rank 0's CPU memory and they go straight into ``save_pretrained`` — no ZeRO
    checkpoint with optimizer states, no fp32 consolidation file, no reload of the base model. Otherwise
    every rank already holds the full weights in ``model``."""
    if engine is not None and engine.zero_optimization_partition_weights():
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        state = gathered_16bit_state_dict(engine)
        unset_hf_deepspeed_config()  # the plain model built next must not be partitioned again
        model = hf_model_from_state(model, unwrap_state_dict(state)) if state is not None else None
    if not rank0:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(dtype)
    if lora and lora.get("enabled"):
        if lora.get("merge", True):
            model = model.merge_and_unload()
        else:
            model.save_pretrained(out_dir)  # adapter only; the base is the previous round's checkpoint
            (out_dir / "base_model").symlink_to(Path(base_dir).resolve(), target_is_directory=True)
            tok.save_pretrained(out_dir)
            return
    model.config.dtype = dtype  # else the config records the base checkpoint's dtype
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def _release(trainer: L.Trainer, module: SFTModule) -> None:
    """Drop every reference this round's training holds to device memory: the DeepSpeed engine (its hooks,
    optimizer and partitioned parameters), the model, the optimizers and ZeRO-3's HfDeepSpeedConfig."""
    strategy = trainer.strategy
    engine = getattr(strategy, "model", None)
    if engine is not None and hasattr(engine, "destroy"):  # DeepSpeedEngine
        release_engine(engine)
    strategy.model = None
    strategy.optimizers = []
    strategy.lr_scheduler_configs = []
    strategy._lightning_module = None
    module.model = None
    module._hf_ds = None
    module.examples = []
