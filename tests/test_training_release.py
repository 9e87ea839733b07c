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
