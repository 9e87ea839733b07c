"""Lightning strategy objects from ``conf/trainer``: single device, DDP (spawned on CPU/one node, external
processes under SLURM/torchrun) and DeepSpeed ZeRO-2/3 with optional CPU offload."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from tapir_exp.errors import ConfigError


def deepspeed_config(ds: dict[str, Any], trainer_cfg: DictConfig) -> dict[str, Any]:
    """A DeepSpeed config dict with concrete numbers. ``gradient_accumulation_steps`` is left out on purpose:
    Lightning's DeepSpeedStrategy sets it from ``accumulate_grad_batches`` and refuses a config that has it."""
    stage = int(ds.get("stage", 2))
    if stage not in (2, 3):
        raise ConfigError("trainer.deepspeed.stage", f"expected 2 or 3, got {stage}")
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": ds.get("overlap_comm", True),
                            "contiguous_gradients": ds.get("contiguous_gradients", True),
                            "reduce_bucket_size": int(float(ds.get("reduce_bucket_size", 5e8))),
                            "allgather_bucket_size": int(float(ds.get("allgather_bucket_size", 5e8)))}
    if ds.get("offload_optimizer"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero.update(stage3_prefetch_bucket_size=int(float(ds.get("stage3_prefetch_bucket_size", 5e7))),
                    stage3_param_persistence_threshold=int(float(ds.get("stage3_param_persistence_threshold", 1e5))),
                    stage3_gather_16bit_weights_on_model_save=bool(ds.get("stage3_gather_16bit_weights_on_model_save",
                                                                          True)))
        if ds.get("offload_parameters"):
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg: dict[str, Any] = {"train_micro_batch_size_per_gpu": int(trainer_cfg.batch_size), "zero_optimization": zero,
                           "gradient_clipping": float(trainer_cfg.gradient_clip_val or 0.0),
                           # our AdamW is a client optimizer; ZeRO shards its states like its own Adam's
                           "zero_allow_untested_optimizer": True}
    precision = str(trainer_cfg.precision)
    if precision.startswith("bf16"):
        cfg["bf16"] = {"enabled": True}
    elif precision.startswith("16"):
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return cfg


def build_strategy(trainer_cfg: DictConfig) -> Any:
    name = str(trainer_cfg.strategy)
    if name == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        ds = OmegaConf.to_container(trainer_cfg.deepspeed, resolve=True) if trainer_cfg.get("deepspeed") else {}
        return DeepSpeedStrategy(config=deepspeed_config(ds, trainer_cfg))
    if name in ("auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp", "single_device"):
        return name
    raise ConfigError("trainer.strategy", f"expected auto, ddp, ddp_spawn or deepspeed, got {name!r}")


def deepspeed_stage(trainer_cfg: DictConfig) -> int | None:
    if str(trainer_cfg.strategy) != "deepspeed":
        return None
    return int((trainer_cfg.get("deepspeed") or {}).get("stage", 2))


def build_optimizer(params: list[Any], tc: dict[str, Any]) -> Any:
    """AdamW — DeepSpeed's CPU Adam (AdamW mode) when ZeRO offloads the optimizer, since ZeRO-Offload steps the
    optimizer on the CPU and refuses a plain torch optimizer there."""
    import torch

    lr, wd = float(tc["lr"]), float(tc.get("weight_decay", 0.0))
    if tc.get("strategy") == "deepspeed" and (tc.get("deepspeed") or {}).get("offload_optimizer"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=lr, weight_decay=wd, adamw_mode=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def param_dtype(trainer_cfg: DictConfig) -> Any:
    """The dtype the student is loaded and trained in.

    DeepSpeed with bf16/fp16: 16-bit weights (its engine casts the module to 16 bit anyway and keeps fp32 master
    weights inside its optimizer), so loading them in 16 bit halves host memory at no cost. Lightning's
    ``*-true`` precisions train in that dtype. ``*-mixed`` keeps fp32 weights on purpose: autocast computes in
    16 bit, while AdamW steps of lr 2e-5 are below bf16's resolution for typical weights and would be lost."""
    import torch

    precision = str(trainer_cfg.precision)
    sixteen = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    if precision.startswith(("bf16", "16")) and (str(trainer_cfg.strategy) == "deepspeed" or
                                                 precision.endswith("-true")):
        return sixteen
    return torch.float32


def export_dtype(trainer_cfg: DictConfig) -> Any:
    """The dtype of the round-end HF checkpoint: the one the forward pass ran in (bf16 for the GPU presets)."""
    import torch

    precision = str(trainer_cfg.precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def hf_zero3_config(ds_config: dict[str, Any]) -> Any:
    """transformers' ``HfDeepSpeedConfig`` for a ZeRO-3 config. While the returned object is alive (transformers
    keeps only a weak reference), ``from_pretrained`` takes its ZeRO-3 path: the model is built inside
    ``zero.Init`` and the checkpoint is loaded into the partitioned parameters one gathered layer at a time,
    instead of copying full tensors into parameters that ``zero.Init`` already shrank to shape [0]."""
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


def gathered_16bit_state_dict(engine: Any) -> dict[str, Any] | None:
    """The engine's full weights in its training dtype, on rank 0 (``None`` on the others); a collective call.

    ZeRO-3: DeepSpeed's consolidation gathers one layer at a time into CPU memory of rank 0 (what its
    ``save_16bit_model`` uses). ZeRO-2/1: every rank holds the full 16-bit module; rank 0 reads it."""
    import torch.distributed as dist

    if engine.zero_optimization_partition_weights():
        if not engine.zero_gather_16bit_weights_on_model_save():
            raise ConfigError("trainer.deepspeed.stage3_gather_16bit_weights_on_model_save",
                              "must be true: the round-end checkpoint is built from the gathered 16-bit weights")
        return engine._zero3_consolidated_16bit_state_dict()
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return {k: v.detach().cpu() for k, v in engine.module_state_dict().items()} if rank == 0 else None


def unwrap_state_dict(state: dict[str, Any], prefix: str = "model.") -> dict[str, Any]:
    """Keys of our LightningModule's state (``model.`` + the HF model's keys) as the HF model names them."""
    return {k.removeprefix("_forward_module.").removeprefix(prefix): v for k, v in state.items()}


def hf_model_from_state(trained: Any, state: dict[str, Any]) -> Any:
    """A plain (unpartitioned) HF model — or peft model — shaped like ``trained`` holding the gathered ``state``.

    Built on the meta device and filled by assignment, so no second copy of the weights is allocated and no
    checkpoint is read again; every weight must be found (tied ones excepted), so a partial load cannot pass. For
    saving only: non-persistent buffers (rotary frequencies) stay on the meta device and are not saved anyway."""
    import torch
    from transformers import AutoModelForCausalLM

    peft_config = getattr(trained, "peft_config", None)
    config = trained.get_base_model().config if peft_config else trained.config
    dtype = next(iter(v for v in state.values() if v.is_floating_point())).dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if peft_config:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config["default"])
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [k for k in missing if k not in params or params[k].is_meta]  # tie_weights filled the tied ones
    if missing or unexpected:
        raise RuntimeError(f"gathered weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model


def release_engine(engine: Any) -> None:
    """Destroy a DeepSpeed engine so that it, its module and its optimizer can be freed.

    ``DeepSpeedEngine.destroy`` removes ZeRO-3's parameter hooks but leaves the engine's top module on
    DeepSpeed's module-level ``FWD_MODULE_STACK`` (``deepspeed/runtime/zero/parameter_offload.py``:
    ``setup_zero_stage3_hooks`` appends it, nothing removes it), and through the engine's forward hooks on that
    module the whole engine — partitioned weights, optimizer states — stays reachable for the life of the
    process (found on DeepSpeed 0.19.8; tests/test_deepspeed_cpu.py checks it with a weak reference)."""
    engine.destroy()
    try:
        from deepspeed.runtime.zero import parameter_offload
    except ImportError:
        return
    ours = {id(m) for m in engine.module.modules()}
    parameter_offload.FWD_MODULE_STACK[:] = [m for m in parameter_offload.FWD_MODULE_STACK if id(m) not in ours]
