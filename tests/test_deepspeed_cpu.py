"""DeepSpeed ZeRO on the CPU, for real: the DeepSpeed config our `conf/trainer/deepspeed_*` options build,
the student loaded the way Lightning builds it (inside ``deepspeed.zero.Init``, through our
``build_student_model``), DeepSpeed's own engine training it in bf16 over 2 CPU processes (gloo), our optimizer
choice, the resumable checkpoint's step, and the round-end HF checkpoint gathered from the 16-bit weights.

What this does not run: Lightning's DeepSpeedStrategy, which refuses anything but CUDA ("only supported on
CUDA GPUs", ``DeepSpeedStrategy.setup_environment``). The test therefore does by hand what that strategy does
around our code — ``model_sharded_context`` (``deepspeed.zero.Init(enabled=zero_stage_3,
config_dict_or_path=config)``) around ``configure_model``, ``deepspeed.initialize`` with our optimizer, and
``save_checkpoint(path, client_state=<Lightning's checkpoint dict>, tag="checkpoint")`` — and everything else
is the code the GPU path uses.
"""

from __future__ import annotations

import gc
import json
import os
import weakref
from pathlib import Path

import pytest
import torch

deepspeed = pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from tapir_exp.student.data import collate, encode  # noqa: E402
from tapir_exp.student.models import TinyLlamaInit  # noqa: E402
from tapir_exp.student.strategies import build_optimizer, deepspeed_config, export_dtype, param_dtype  # noqa: E402
from tests.support_pipeline import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONVS = [[{"role": "user", "content": f"Name colour {i}."},
          {"role": "assistant", "content": ["red", "blue", "green", "amber"][i % 4]}] for i in range(16)]
STEPS = 8


def _worker(rank: int, world: int, port: int, tc: dict, ds_cfg: dict, init_dir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    import deepspeed as ds

    ds.init_distributed(dist_backend="gloo")
    refs = _train_and_export(rank, world, tc, ds_cfg, init_dir, out)
    gc.collect()
    alive = sorted(name for name, ref in refs.items() if ref() is not None)
    (Path(out) / f"alive{rank}.json").write_text(json.dumps(alive))
    ds.comm.barrier()


def _train_and_export(rank: int, world: int, tc: dict, ds_cfg: dict, init_dir: str, out: str) -> dict:
    import deepspeed as ds
    from transformers import AutoTokenizer

    from tapir_exp.student.models import preload_model_class
    from tapir_exp.student.strategies import release_engine
    from tapir_exp.student.train import build_student_model, write_round_checkpoint

    torch.manual_seed(0)
    trainer_cfg = OmegaConf.create(tc)
    zero3 = ds_cfg["zero_optimization"]["stage"] == 3

    class Wrapper(torch.nn.Module):  # stands in for our LightningModule: the HF model under `.model`
        def __init__(self, model):
            super().__init__()
            self.model = model

    preload_model_class(init_dir)
    with ds.zero.Init(enabled=zero3, config_dict_or_path=ds_cfg):  # Lightning's model_sharded_context
        model, keep = build_student_model(init_dir, param_dtype(trainer_cfg), "sdpa", ds_cfg if zero3 else None)
    module = Wrapper(model)
    tok = AutoTokenizer.from_pretrained(init_dir)
    examples = encode(tok, CONVS, 64)
    optimizer = build_optimizer([p for p in module.parameters() if p.requires_grad], tc)
    engine, *_ = ds.initialize(model=module, optimizer=optimizer, config=ds_cfg)
    bs = ds_cfg["train_micro_batch_size_per_gpu"]
    losses = []
    for step in range(STEPS):
        # each rank takes its own slice of the data, as the distributed sampler would
        start = (step * world + rank) * bs % len(examples)
        batch = collate(examples[start:start + bs], tok.pad_token_id)
        loss = engine.module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   labels=batch["labels"], use_cache=False).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    # the resumable checkpoint exactly as Lightning's DeepSpeedStrategy.save_checkpoint writes it
    engine.save_checkpoint(str(Path(out) / "last.ckpt"), client_state={"global_step": STEPS, "epoch": 0},
                           tag="checkpoint")
    # the weights as the engine holds them, gathered from all shards, to compare the HF export against
    params = list(engine.module.model.named_parameters())
    with ds.zero.GatheredParameters([p for _, p in params], enabled=zero3):
        full = {n: p.detach().clone() for n, p in params}
    write_round_checkpoint(engine.module.model, tok, Path(out) / "hf", None, base_dir=init_dir,
                           dtype=export_dtype(trainer_cfg), engine=engine, rank0=rank == 0)
    if rank == 0:
        torch.save(full, Path(out) / "gathered.pt")
        (Path(out) / "losses.json").write_text(json.dumps(losses))
        (Path(out) / "optimizer.txt").write_text(type(optimizer).__name__)
    ds.comm.barrier()
    refs = {"engine": weakref.ref(engine), "module": weakref.ref(module), "optimizer": weakref.ref(optimizer),
            "model": weakref.ref(model)}
    release_engine(engine)  # what train_round does before it returns: nothing of the engine may survive
    return refs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_ds")
    TinyLlamaInit(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, seed=0)(
        d, corpus=[c[0]["content"] + " " + c[1]["content"] for c in CONVS])
    return d


def _trainer(option: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("tapir", overrides=[f"trainer={option}", "trainer.batch_size=2", "trainer.lr=5e-3",
                                          # the GPU presets' bf16, on 2 CPU processes
                                          "trainer.precision=bf16-mixed", "trainer.devices=2"])
    return cfg.trainer


@pytest.mark.slow
@pytest.mark.parametrize("option", ["deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"])
def test_zero_shards_train_and_export_bf16_hf_weights(option, tiny, tmp_path):
    import torch.multiprocessing as mp
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from tapir_exp.student.train import _checkpoint_step

    trainer = _trainer(option)
    tc = OmegaConf.to_container(trainer, resolve=True)
    ds_cfg = deepspeed_config(tc["deepspeed"], trainer)
    assert "auto" not in json.dumps(ds_cfg)  # concrete numbers only
    ds_cfg["gradient_accumulation_steps"] = int(tc["accumulate_grad_batches"])  # what Lightning's strategy adds
    mp.spawn(_worker, args=(2, free_port(), tc, ds_cfg, str(tiny), str(tmp_path)), nprocs=2, join=True)

    losses = json.loads((tmp_path / "losses.json").read_text())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    offload = bool(tc["deepspeed"]["offload_optimizer"])
    assert (tmp_path / "optimizer.txt").read_text() == ("DeepSpeedCPUAdam" if offload else "AdamW")
    shards = sorted(p.name for p in (tmp_path / "last.ckpt/checkpoint").iterdir())
    assert sum("optim_states" in s for s in shards) == 2  # optimizer states really sharded over both ranks
    assert _checkpoint_step(tmp_path / "last.ckpt") == STEPS  # a resume continues at the saved step
    for rank in (0, 1):  # the destroyed engine, its module, model and optimizer were all freed
        assert json.loads((tmp_path / f"alive{rank}.json").read_text()) == []

    # the HF directory: bf16 on disk, the engine's trained weights exactly, and plain transformers loads it
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert reloaded.dtype == torch.bfloat16 and reloaded.config.dtype == torch.bfloat16
    state = reloaded.state_dict()
    gathered = torch.load(tmp_path / "gathered.pt")
    for name, value in gathered.items():
        assert value.dtype == torch.bfloat16
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)
    init = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    assert any(not torch.equal(init[n].to(torch.bfloat16), state[n]) for n in gathered)  # training changed them
    assert not list(tmp_path.glob("*fp32*"))  # no consolidated fp32 copy was written
