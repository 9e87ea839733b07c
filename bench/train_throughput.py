"""Student training throughput: our Lightning round (length-grouped batches, and packed rows) against a
plain Hugging Face ``Trainer`` on the same model, data, batch size, optimiser schedule and machine, measured
in the same run. Also HF generation tokens/s, and vLLM's where vLLM is installed.

    .venv/bin/python bench/train_throughput.py --epochs 3 --batch-size 8

Counts: "tokens" are real (non-pad) input tokens processed; padding efficiency = real ÷ (rows × row width)
over all batches. Each timing covers model load, training and saving the checkpoint, for both sides.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from tapir_exp.config import resource_path  # noqa: E402
from tapir_exp.records import read_records  # noqa: E402
from tapir_exp.student.data import IGNORE, collate, encode  # noqa: E402
from tapir_exp.student.models import TinyLlamaInit  # noqa: E402
from tapir_exp.student.train import train_round  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def demo_conversations(n: int) -> list[list[dict[str, str]]]:
    """The first n demo pool items as training conversations, read by the project's own reader."""
    pool = read_records(resource_path("demo/pool.jsonl")).records
    return [ex.messages(with_output=True) for ex in pool[:n]]


def hf_trainer(model_dir: Path, examples: list[dict], out: Path, args) -> tuple[float, int, int]:
    """The baseline: transformers' Trainer with its defaults for batching (random order, pad per batch)."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    pad_id = json.loads((model_dir / "config.json").read_text())["pad_token_id"]
    seen = {"real": 0, "padded": 0}

    def collate_counting(batch):
        b = collate(batch, pad_id)
        seen["real"] += int(b["attention_mask"].sum())
        seen["padded"] += b["input_ids"].numel()
        return b

    steps = math.ceil(len(examples) / args.batch_size) * args.epochs
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targs = TrainingArguments(output_dir=str(out / "hf_work"), per_device_train_batch_size=args.batch_size,
                              num_train_epochs=args.epochs, learning_rate=args.lr, lr_scheduler_type="cosine",
                              warmup_steps=int(0.03 * steps), max_grad_norm=1.0, weight_decay=0.0,
                              logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
                              dataloader_num_workers=0, remove_unused_columns=False, seed=0, disable_tqdm=True)
    Trainer(model=model, args=targs, train_dataset=examples, data_collator=collate_counting).train()
    model.save_pretrained(out / "hf_model")
    return time.perf_counter() - t0, seen["real"], seen["padded"]


def ours(model_dir: Path, convs: list, out: Path, args, **trainer_kw) -> tuple[float, int, float, int]:
    trainer_cfg = OmegaConf.load(REPO / "conf/trainer/cpu.yaml")
    trainer_cfg.merge_with({"batch_size": args.batch_size, "max_epochs": args.epochs, "lr": args.lr,
                            "checkpoint_every_n_steps": 10_000, **trainer_kw})
    student_cfg = OmegaConf.create({"max_length": args.max_length, "lora": {"enabled": False},
                                    "gradient_checkpointing": False})
    work = out / f"work_{len(list(out.iterdir()))}"
    t0 = time.perf_counter()
    s = train_round(model_dir, convs, work / "model", student_cfg=student_cfg, trainer_cfg=trainer_cfg,
                    work_dir=work, seed=0)
    return time.perf_counter() - t0, s.steps, s.padding_efficiency, s.tokens


def generation(model_dir: Path, convs: list, args) -> list[tuple[str, float]]:
    from tapir_exp.student.generate import HFGenerator

    prompts = [c[:1] for c in convs[: args.gen_prompts]]
    t0 = time.perf_counter()
    gens = HFGenerator(batch_size=16, max_new_tokens=64).generate(model_dir, prompts)
    rows = [("hf", sum(g.completion_tokens for g in gens) / (time.perf_counter() - t0))]
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vllm: not in this venv - skipped; the vLLM comparison is bench/vllm_throughput.py, run with "
              ".venv-vllm/bin/python (the CPU build, scripts/setup_vllm_cpu.sh)")
    else:
        from tapir_exp.student.generate import VLLMGenerator

        t0 = time.perf_counter()
        gens = VLLMGenerator(max_new_tokens=64).generate(model_dir, prompts)
        rows.append(("vllm", sum(g.completion_tokens for g in gens) / (time.perf_counter() - t0)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=345)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--gen-prompts", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    convs = demo_conversations(args.items)
    tmp = Path(tempfile.mkdtemp(prefix="tapir-bench-"))
    try:
        model_dir = tmp / "init"
        # The tiny student of conf/student/tiny.yaml.
        TinyLlamaInit(seed=0)(model_dir, corpus=[c[0]["content"] + " " + c[1]["content"] for c in convs])
        from transformers import AutoTokenizer

        examples = encode(AutoTokenizer.from_pretrained(model_dir), convs, args.max_length)
        real_per_epoch = sum(len(e["input_ids"]) for e in examples)
        supervised = sum(sum(lab != IGNORE for lab in e["labels"]) for e in examples)
        print(f"{len(examples)} examples, {real_per_epoch} tokens/epoch ({supervised} supervised), "
              f"{args.epochs} epochs, batch {args.batch_size}, {torch.get_num_threads()} threads")
        out = tmp / "runs"
        out.mkdir()
        base_s, real, padded = hf_trainer(model_dir, examples, out, args)
        assert real == real_per_epoch * args.epochs, (real, real_per_epoch)
        base_tps = real / base_s
        print(f"{'setting':42} {'seconds':>8} {'tokens/s':>9} {'non-pad':>8} {'vs HF':>6}")
        print(f"{'HF Trainer (baseline, random batches)':42} {base_s:8.1f} {base_tps:9.0f} {real / padded:8.1%} "
              f"{1.0:5.2f}x")
        for label, kw in (("ours: length-grouped batches", {"packing": False, "group_by_length": True}),
                          (f"ours: packed rows of {args.max_length}", {"packing": True}),
                          ("ours: random batches (as HF)", {"packing": False, "group_by_length": False})):
            secs, steps, eff, sup = ours(model_dir, convs, out, args, **kw)
            assert sup == supervised * args.epochs, (sup, supervised)  # every supervised token trained on, once/epoch
            tps = real_per_epoch * args.epochs / secs
            print(f"{label:42} {secs:8.1f} {tps:9.0f} {eff:8.1%} {tps / base_tps:5.2f}x   ({steps} steps)")
        for name, tps in generation(model_dir, convs, args):  # a random-init model: every answer runs to the cap
            print(f"generation {name}: {tps:.0f} new tokens/s ({args.gen_prompts} prompts, 64 new tokens max)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
