"""ZeRO-3 loads the student the way Lightning builds it: inside ``deepspeed.zero.Init`` (its
``model_sharded_context``) our ``build_student_model`` loads a saved checkpoint on 2 CPU processes (gloo); every
parameter is partitioned (no full copy per rank) and, gathered, equals the checkpoint's tensor in bf16.

Without transformers' ``HfDeepSpeedConfig`` alive, ``from_pretrained`` copies full tensors into parameters that
``zero.Init`` already shrank to shape [0] and fails (reproduced with world size 1 and 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed")

from tapir_exp.student.models import TinyLlamaInit  # noqa: E402
from tests.support_pipeline import free_port  # noqa: E402


def _worker(rank: int, world: int, port: int, init_dir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    import deepspeed as ds
    from safetensors.torch import load_file

    from tapir_exp.student.models import preload_model_class
    from tapir_exp.student.train import build_student_model

    ds.init_distributed(dist_backend="gloo")
    cfg = {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True},
           "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    preload_model_class(init_dir)
    with ds.zero.Init(enabled=True, config_dict_or_path=cfg):
        model, keep = build_student_model(init_dir, torch.bfloat16, "sdpa", cfg)
    params = list(model.named_parameters())
    local = {n: (p.numel(), p.ds_tensor.numel(), p.ds_numel) for n, p in params}
    with ds.zero.GatheredParameters([p for _, p in params]):
        full = {n: p.detach().clone() for n, p in params}
    saved = load_file(str(Path(init_dir) / "model.safetensors"))
    report = {"dtype": sorted({str(v.dtype) for v in full.values()}),
              "partitioned": all(n == 0 and shard < total for n, shard, total in local.values()),
              "mismatch": [n for n, v in full.items() if n in saved and not torch.equal(v, saved[n].to(v.dtype))],
              "missing": [n for n in full if n not in saved and n != "lm_head.weight"]}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(report))
    ds.comm.barrier()
    del keep


@pytest.mark.slow
def test_zero3_from_pretrained_partitions_and_loads_the_checkpoint(tmp_path):
    import torch.multiprocessing as mp

    init = tmp_path / "init"
    TinyLlamaInit(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, seed=0)(init, corpus=["red blue green amber"])
    mp.spawn(_worker, args=(2, free_port(), str(init), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report == {"dtype": ["torch.bfloat16"], "partitioned": True, "mismatch": [], "missing": []}, report
