"""Training gives its devices back and is configured the way the GPU presets say: no trainer, module, model
or optimizer of a round survives ``train_round`` (weak references, automatic garbage collection off, so only
the function's own release can free the trainer <-> module cycles); ``student.attn_implementation`` reaches the
model; a job whose world size disagrees with ``trainer.devices`` refuses to start with one line."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

import tapir_exp.student.train as train_mod
from tapir_exp.distributed import check_world
from tapir_exp.errors import ConfigError
from tapir_exp.student.models import TinyLlamaInit, load_causal_lm
from tests.test_student import CONVS, student_cfg, trainer_cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_release")
    TinyLlamaInit(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=256, seed=0)(
        d, corpus=[c[0]["content"] + " " + c[1]["content"] for c in CONVS])
    return d


def test_no_training_object_survives_the_round(tiny, tmp_path, monkeypatch):
    refs: dict[str, weakref.ref] = {}

    class Recording(train_mod.SFTModule):
        def configure_model(self) -> None:
            super().configure_model()
            refs["module"], refs["model"] = weakref.ref(self), weakref.ref(self.model)

        def configure_optimizers(self):
            out = super().configure_optimizers()
            refs["optimizer"] = weakref.ref(out["optimizer"])
            return out

    class RecordingTrainer(L.Trainer):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            refs["trainer"], refs["strategy"] = weakref.ref(self), weakref.ref(self.strategy)

    monkeypatch.setattr(train_mod, "SFTModule", Recording)
    monkeypatch.setattr(train_mod.L, "Trainer", RecordingTrainer)
    gc.collect()
    gc.disable()
    try:
        t = train_mod.train_round(tiny, CONVS[:8], tmp_path / "out", student_cfg=student_cfg(attn_implementation="eager"),
                                  trainer_cfg=trainer_cfg(max_epochs=1), work_dir=tmp_path / "w", seed=0)
        alive = sorted(name for name, ref in refs.items() if ref() is not None)
    finally:
        gc.enable()
    assert t.steps == 2 and set(refs) == {"module", "model", "optimizer", "trainer", "strategy"}
    assert alive == []


def test_attn_implementation_reaches_the_model(tiny):
    assert load_causal_lm(tiny, torch.float32, "eager").config._attn_implementation == "eager"
    assert load_causal_lm(tiny, torch.bfloat16, "sdpa").config._attn_implementation == "sdpa"
    assert load_causal_lm(tiny, torch.bfloat16, "sdpa").dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="student.attn_implementation"):
        load_causal_lm(tiny, torch.float32, "flash")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="flash-attn package"):
            load_causal_lm(tiny, torch.float32, "flash_attention_2")


@pytest.mark.parametrize(("env", "devices", "nodes", "ok"), [
    ({}, 8, 1, True),  # one process: Lightning starts the others itself
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, 8, 1, True),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, 4, 1, False),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "16"}, 8, 2, True),
    ({"RANK": "0", "WORLD_SIZE": "2"}, 1, 1, False),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "0,1", 1, True),
])
def test_world_size_must_match_trainer_devices(monkeypatch, env, devices, nodes, ok):
    for var in ("SLURM_PROCID", "SLURM_NTASKS", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = OmegaConf.create({"devices": devices, "num_nodes": nodes})
    if ok:
        check_world(cfg)
    else:
        with pytest.raises(ConfigError, match="trainer.devices") as e:
            check_world(cfg)
        assert "\n" not in str(e.value)


def test_deepspeed_epochs_hold_whole_accumulation_windows():
    """Under DeepSpeed an epoch's per-rank batches are a multiple of accumulate_grad_batches, so DeepSpeed's
    own micro-step counter and Lightning's step count (and with it the LR schedule) never drift apart."""
    lengths = list(range(5, 45))  # 40 examples, batch 4: 10 batches
    plain = train_mod.WholeAccumulationBatches(lengths, 4, seed=0)
    cut = train_mod.WholeAccumulationBatches(lengths, 4, seed=0, multiple_of=4)
    assert len(plain) == len(list(plain)) == 10
    assert len(cut) == len(list(cut)) == 8
    assert list(cut) == plain.batches(0)[:8]


def test_round_checkpoint_is_written_in_the_training_dtype(tiny, tmp_path):
    """bf16 training (Lightning's bf16-mixed on the CPU: fp32 weights, bf16 compute) writes a bf16 HF directory,
    not the base config's dtype; fp32 weights stay fp32 while training (see strategies.param_dtype)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    train_mod.train_round(tiny, CONVS[:8], tmp_path / "out", student_cfg=student_cfg(),
                          trainer_cfg=trainer_cfg(max_epochs=1, precision="bf16-mixed"), work_dir=tmp_path / "w",
                          seed=0)
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    assert AutoConfig.from_pretrained(tmp_path / "out").dtype == torch.bfloat16


def test_gathered_lora_state_rebuilds_a_mergeable_model(tiny):
    """ZeRO-3 + LoRA: the gathered state of a peft model becomes a plain peft model (meta-built, filled by
    assignment) whose merged weights equal the trained model's."""
    from peft import LoraConfig, get_peft_model

    from tapir_exp.student.strategies import hf_model_from_state

    base = load_causal_lm(tiny, torch.bfloat16, "sdpa")
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_()  # a trained adapter (lora_B starts at zero)
    state = {k: v.clone() for k, v in peft.state_dict().items()}
    rebuilt = hf_model_from_state(peft, state)
    want = peft.merge_and_unload().state_dict()
    got = rebuilt.merge_and_unload().state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="do not match"):
        hf_model_from_state(peft, {k: v for k, v in state.items() if "lora_A" not in k})
