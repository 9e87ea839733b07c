"""The student: tiny init, loss masking, Lightning training that learns, generation, exact kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tapir_exp.student.data import IGNORE, LengthGroupedBatches, collate, encode, pack
from tapir_exp.student.generate import HFGenerator
from tapir_exp.student.models import TinyLlamaInit
from tapir_exp.student.train import train_round

REPO = Path(__file__).resolve().parents[1]
CONVS = [[{"role": "user", "content": f"Say the colour number {i}."},
          {"role": "assistant", "content": f"The colour is {['red', 'blue', 'green'][i % 3]}."}] for i in range(24)]


def student_cfg(**kw):
    return OmegaConf.create({"max_length": 128, "lora": {"enabled": False}, "gradient_checkpointing": False, **kw})


def trainer_cfg(**kw):
    base = OmegaConf.load(REPO / "conf/trainer/cpu.yaml")
    base.merge_with({"batch_size": 4, "max_epochs": 2, "lr": 3e-3, "checkpoint_every_n_steps": 2, **kw})
    return base


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    TinyLlamaInit(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=256, seed=0)(
        d, corpus=[c[0]["content"] + " " + c[1]["content"] for c in CONVS])
    return d


def test_loss_only_on_the_answer(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    ex = encode(tok, CONVS[:1], 128)[0]
    supervised = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE]
    assert tok.decode(supervised).startswith("The colour is red.")
    assert supervised[-1] == tok.eos_token_id  # the student learns to stop
    prompt_part = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab == IGNORE])
    assert "Say the colour number 0." in prompt_part and "red" not in prompt_part


def test_batches_deterministic_grouped_and_resumable():
    lengths = [5, 50, 6, 51, 7, 52, 8, 53] * 3
    s = LengthGroupedBatches(lengths, 4, seed=1)
    assert s.batches(0) == LengthGroupedBatches(lengths, 4, seed=1).batches(0)
    assert s.batches(0) != s.batches(1)
    assert sorted(i for b in s.batches(0) for i in b) == list(range(len(lengths)))
    assert s.padding_efficiency() > LengthGroupedBatches(lengths, 4, seed=1, group=False).padding_efficiency()
    full = list(s)
    s.resume(0, 2)
    assert list(s) == full[2:]


def test_packing_keeps_examples_apart(tiny):
    """Hand-made examples packed into rows: every example's logits are the ones it gets alone (no attention
    across the boundary), each label survives exactly once, and the rows are nearly pad-free."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    convs = [[{"role": "user", "content": "x " * (1 + 3 * i)}, {"role": "assistant", "content": "y " * (1 + i)}]
             for i in range(7)]
    examples = encode(tok, convs, 128)
    capacity = max(len(e["input_ids"]) for e in examples) + 8
    rows = pack(examples, capacity, seed=0)
    assert 1 < len(rows) < len(examples) and all(len(r["input_ids"]) <= capacity for r in rows)
    assert len({len(r["input_ids"]) for r in rows}) > 1  # lengths differ: collate pads a tail
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(e["input_ids"]) for e in examples)
    supervised = sorted(t for r in rows for t, lab in zip(r["input_ids"], r["labels"], strict=True) if lab != IGNORE)
    assert supervised == sorted(t for e in examples for t, lab in zip(e["input_ids"], e["labels"], strict=True)
                                if lab != IGNORE)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    batch = collate(rows, tok.pad_token_id)
    assert batch["attention_mask"] is None
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        checked = 0
        for r, row in enumerate(rows):
            starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
            for a, b in zip(starts, starts[1:], strict=False):
                alone = model(input_ids=torch.tensor([row["input_ids"][a:b]]), use_cache=False).logits[0]
                torch.testing.assert_close(packed_logits[r, a:b], alone, atol=1e-4, rtol=1e-4)
                checked += 1
        assert checked == len(examples)
        # the same rows with a plain causal mask (positions not restarted) would leak: the check above can fail
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits
        r = next(i for i, row in enumerate(rows) if row["position_ids"].count(0) > 1)
        second = rows[r]["position_ids"].index(0, 1)
        assert not torch.allclose(leaky[r, second:second + 3], packed_logits[r, second:second + 3], atol=1e-4)


def test_training_with_packing_learns(tiny, tmp_path):
    t = train_round(tiny, CONVS, tmp_path / "out", student_cfg=student_cfg(),
                    trainer_cfg=trainer_cfg(max_epochs=8, packing=True, pack_length=128, batch_size=2), work_dir=tmp_path / "w",
                    seed=0)
    assert t.padding_efficiency > 0.9 and t.steps < 8 * 6  # fewer, fuller rows than one example per row
    assert t.tokens == 8 * sum(sum(lab != IGNORE for lab in e["labels"]) for e in _encoded(tiny))
    assert sum(t.losses[-2:]) / 2 < sum(t.losses[:2]) / 2


def _encoded(tiny):
    from transformers import AutoTokenizer

    return encode(AutoTokenizer.from_pretrained(tiny), CONVS, 128)


def test_training_lowers_loss_and_checkpoint_generates(tiny, tmp_path):
    out = tmp_path / "out"
    t = train_round(tiny, CONVS, out, student_cfg=student_cfg(), trainer_cfg=trainer_cfg(max_epochs=6),
                    work_dir=tmp_path / "work", seed=0)
    assert t.steps == 6 * 6 and len(t.losses) == t.steps and t.tokens > 0
    assert sum(t.losses[-6:]) / 6 < sum(t.losses[:6]) / 6
    gens = HFGenerator(batch_size=4, max_new_tokens=8).generate(out, [c[:1] for c in CONVS[:3]])
    assert len(gens) == 3 and all(g.completion_tokens <= 8 for g in gens)


CHILD = """
import sys, json
from omegaconf import OmegaConf
sys.path.insert(0, {repo!r})
from tests.test_student import CONVS, student_cfg, trainer_cfg
import time
import tapir_exp.student.train as train_mod
from tapir_exp.student.train import train_round
if sys.argv[4] == "slow":
    # The first run must still be training when the test's signal arrives, however fast this machine is.
    class SlowCheckpointing(train_mod.Checkpointing):
        def on_train_batch_end(self, *args):
            time.sleep(0.05)
            super().on_train_batch_end(*args)
    train_mod.Checkpointing = SlowCheckpointing
t = train_round(sys.argv[1], CONVS * 8, sys.argv[2], student_cfg=student_cfg(), trainer_cfg=trainer_cfg(max_epochs=2),
                work_dir=sys.argv[3], seed=0)
print(json.dumps({{"steps": t.steps, "resumed_from": t.resumed_from, "losses": len(t.losses)}}), flush=True)
"""


def _child(tiny, tmp_path, name, pace="fast"):
    code = CHILD.format(repo=str(REPO))
    return subprocess.Popen([sys.executable, "-c", code, str(tiny), str(tmp_path / name), str(tmp_path / "work"), pace],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_training_resumes_exactly(tiny, tmp_path, sig):
    ckpt = tmp_path / "work" / "last.ckpt"
    proc = _child(tiny, tmp_path, "a", pace="slow")
    while not ckpt.exists() and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    proc.wait()
    assert ckpt.exists()
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM  # saved a checkpoint on the signal, then exited
    rerun = _child(tiny, tmp_path, "b")
    out, _ = rerun.communicate()
    assert rerun.returncode == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["resumed_from"] and summary["resumed_from"] > 0
    assert summary["steps"] == 2 * 48  # 192 examples / batch 4 x 2 epochs: the same as an uninterrupted run
    assert summary["losses"] == summary["steps"]  # one logged loss per step, none trained twice


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_hand_back_weights(tiny, tmp_path):
    """Two ranks (gloo) split the batches: half the optimizer steps of one process, same data; the LR schedule
    counts those real steps (warm-up over its fraction of them, the last step at the end value)."""
    out = tmp_path / "out"
    t = train_round(tiny, CONVS, out, student_cfg=student_cfg(),
                    trainer_cfg=trainer_cfg(strategy="ddp_spawn", devices=2, max_epochs=2, warmup_ratio=0.5,
                                            min_lr_ratio=0.1),
                    work_dir=tmp_path / "work", seed=0)
    assert t.steps == 2 * 3  # 24 examples / batch 4 = 6 batches per epoch, 3 per rank
    assert len(t.losses) == t.steps
    lr = 3e-3
    assert len(t.lrs) == t.steps
    warm = int(t.steps * 0.5)  # 3 steps below the peak, then the peak (a schedule sized for 12 steps: all 6 below)
    assert all(x < lr for x in t.lrs[:warm]) and t.lrs[warm] == pytest.approx(lr)
    assert t.lrs[-1] == pytest.approx(0.1 * lr)  # the schedule's end value on the last step
    assert t.effective_batch == {"world_size": 2, "rows_per_step": 8, "optimizer_steps_per_epoch": 3,
                                 "examples_per_step": 8.0, "tokens_per_step": t.effective_batch["tokens_per_step"]}
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(out)
    init = AutoModelForCausalLM.from_pretrained(tiny)
    changed = any((a - b).abs().sum() > 0 for a, b in zip(trained.parameters(), init.parameters(), strict=True))
    assert changed  # the main process saved the workers' trained weights, not the initial ones


def test_openai_generator_answers_through_a_served_student():
    """generation=openai: a student behind an OpenAI-compatible endpoint (real HTTP on 127.0.0.1), with the
    oracle client's retries; a request that keeps failing is an error, not a silently missing answer."""
    from tapir_exp.llm.oracle import BudgetExceeded
    from tapir_exp.student.generate import OpenAIGenerator
    from tapir_exp.testing.openai_server import FakeOpenAIServer

    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
    with FakeOpenAIServer(responder=lambda body: "answer to " + body["messages"][-1]["content"]) as srv:
        srv.inject("500", times=1)
        gens = OpenAIGenerator(base_url=srv.base_url, max_new_tokens=20, seed=3, max_retries=2, backoff_base_s=0.05).generate(
            "/ckpt/round_1/student", convs)
        assert [g.text for g in gens] == [f"answer to question {i}" for i in range(6)]
        assert all(g.finish_reason == "stop" and g.completion_tokens > 0 and g.prompt_tokens > 0 for g in gens)
        assert srv.faults_served == ["500"] and len(srv.requests) == 7
        sent = srv.requests[-1]
        assert sent["model"] == "/ckpt/round_1/student" and sent["max_tokens"] == 20 and sent["seed"] == 3
    with FakeOpenAIServer(fault_when=lambda body: "500" if body["messages"][-1]["content"] == "question 2" else None) \
            as srv, pytest.raises(BudgetExceeded):
        OpenAIGenerator(base_url=srv.base_url, model="student", max_retries=1, backoff_base_s=0.05).generate("unused", convs)


@pytest.mark.parametrize("merge", [True, False])
def test_lora_round_merged_or_adapter_both_load_later(tiny, tmp_path, merge):
    """LoRA with gradient checkpointing and accumulation: merged weights load with plain transformers; an
    adapter loads onto its base with peft; either way the trained model differs from the init."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
            "merge": merge}
    out = tmp_path / "out"
    t = train_round(tiny, CONVS, out, student_cfg=student_cfg(lora=lora, gradient_checkpointing=True),
                    trainer_cfg=trainer_cfg(max_epochs=2, accumulate_grad_batches=2, lr=1e-2), work_dir=tmp_path / "w",
                    seed=0)
    assert t.steps == 2 * 3  # 24 examples / batch 4 = 6 batches, 2 per optimizer step, 2 epochs
    base = AutoModelForCausalLM.from_pretrained(tiny)
    if merge:
        model = AutoModelForCausalLM.from_pretrained(out)
    else:
        assert (out / "adapter_config.json").is_file() and (out / "base_model").resolve() == Path(tiny).resolve()
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base_model"), out).merge_and_unload()
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits)
