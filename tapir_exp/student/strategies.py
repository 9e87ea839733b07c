"""Lightning strategy objects from ``conf/trainer``: single device, DDP (spawned on CPU/one node, external
processes under SLURM/torchrun) and DeepSpeed ZeRO-2/3 with optional CPU offload."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from tapir_exp.errors import ConfigError


def deepspeed_config(ds: dict[str, Any], trainer_cfg: DictConfig) -> dict[str, Any]:
    """A DeepSpeed config dict (batch sizes are filled in by Lightning from the dataloader)."""
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
    cfg: dict[str, Any] = {"zero_optimization": zero, "gradient_clipping": float(trainer_cfg.gradient_clip_val or 0.0),
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
