"""Lightning strategy objects from ``conf/trainer``: single device, DDP (spawned on CPU/one node, external
processes under SLURM/torchrun) and DeepSpeed ZeRO-2/3 with optional CPU offload."""

from __future__ import annotations

from pathlib import Path
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


def hf_model_from_zero_checkpoint(checkpoint_dir: str | Path, base_model_dir: str | Path, work_dir: str | Path) -> Any:
    """Consolidate a (sharded) ZeRO-2/3 checkpoint directory into fp32 weights and load them into the HF model
    of ``base_model_dir``. Parameter names carry the wrappers' prefixes (Lightning's ``_forward_module.``, our
    module's ``model.``); every model weight must be found, so a silent partial load cannot happen."""
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict
    from transformers import AutoModelForCausalLM

    state = convert_zero_checkpoint_to_fp32_state_dict(checkpoint_dir, Path(work_dir) / "final_fp32.pt")
    weights = {k.removeprefix("_forward_module.").removeprefix("model."): v for k, v in state["state_dict"].items()}
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"{checkpoint_dir}: ZeRO checkpoint does not match the model "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model
