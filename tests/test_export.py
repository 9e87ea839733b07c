"""Each round's SFT set and preference pairs, exported by the pipeline and by `tapir-export`, load with
`datasets` in the layouts LLaMA-Factory and TRL read, and the pairs are exactly the MFD artifact's hard items."""

from __future__ import annotations

import json
import shutil

import pytest

from tapir_exp.cli import export_main
from tapir_exp.records import load_examples
from tests.support_pipeline import SMALL_SKILLS_BASE, run_tapir

pytestmark = pytest.mark.slow


def _load(path, cache):
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))


def test_round_exports_load_with_datasets_and_match_the_mfd_artifact(tmp_path, capsys):
    proc = run_tapir(["experiment=skills_tapir", "logger=none", "oracle.progress=false", "curriculum.rounds=1",
                      "curriculum.size=16", "data.generator.n=40", "steps.warmup.size=16", "steps.warmup.epochs=1",
                      # mostly tasks the refiner restyles, so that some hard items have refined answers; the
                      # 8-step base answers nothing after one epoch at the skills lr (1.5e-3), something at 3e-3
                      "data.generator.mix.Others=0", "data.generator.mix.Grammar=0", "trainer.lr=3e-3",
                      "trainer.max_epochs=1", "steps.expand.per_round=4", "eval.skills.per_cell=1",
                      "generation.max_new_tokens=4", *SMALL_SKILLS_BASE], tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "outputs/skills").glob("*/summary.json")).parent
    export, cache = run / "round_1" / "export", tmp_path / "hf_cache"

    dataset = load_examples(run / "round_1/dataset.jsonl")
    alpaca = _load(export / "sft_alpaca.json", cache)
    assert alpaca.column_names == ["instruction", "input", "output"]
    assert [dict(r) for r in alpaca] == [{"instruction": e.instruction, "input": e.input, "output": e.output}
                                         for e in dataset]
    sharegpt = _load(export / "sft_sharegpt.json", cache)
    assert [[t["from"] for t in r["conversations"]] for r in sharegpt] == [["human", "gpt"]] * len(dataset)
    assert [r["conversations"][1]["value"] for r in sharegpt] == [e.output for e in dataset]

    judged = load_examples(run / "round_1/mfd.jsonl")
    refined = {e.id: e.output for e in dataset if e.meta.get("refined")}
    want = {e.id: (e.prompt, refined.get(e.id, e.output), e.meta["student"]) for e in judged
            if e.meta.get("hard") and e.meta.get("student", "").strip()
            and refined.get(e.id, e.output).strip() != e.meta["student"].strip()}
    assert want and any(i in refined for i in want)  # hard items, some with refined answers
    dpo = _load(export / "dpo.jsonl", cache)
    assert {"prompt", "chosen", "rejected"} <= set(dpo.column_names)
    assert {r["id"]: (r["prompt"], r["chosen"], r["rejected"]) for r in dpo} == \
        {i: (p, c.strip(), s.strip()) for i, (p, c, s) in want.items()}
    assert all(r["mfd"] > 0 for r in dpo)  # the skills oracle's delta is below every hard item's MFD

    info = json.loads((export / "dataset_info.json").read_text())
    assert set(info) == {"tapir_round_1_alpaca", "tapir_round_1_sharegpt", "tapir_round_1_dpo"}
    assert info["tapir_round_1_dpo"]["ranking"] is True and info["tapir_round_1_sharegpt"]["formatting"] == "sharegpt"
    for entry in info.values():  # every column LLaMA-Factory is told about is in the file it names
        first = _load(export / entry["file_name"], cache)
        assert set(entry["columns"].values()) <= set(first.column_names)

    # tapir-export on the finished run: every round, another threshold
    export_main([str(run), "--out", str(tmp_path / "exp"), "--delta", "-100"])
    printed = capsys.readouterr().out
    assert "round_0: " in printed and "round_1: " in printed
    assert (tmp_path / "exp/round_0/sft_alpaca.json").is_file() and not (tmp_path / "exp/round_0/dpo.jsonl").exists()
    everything = _load(tmp_path / "exp/round_1/dpo.jsonl", cache)
    assert set(everything["id"]) >= set(want)  # MFD > -100: every judged item with a differing answer
    export_main([str(run), "--out", str(tmp_path / "none"), "--delta", "100"])
    assert not (tmp_path / "none/round_1/dpo.jsonl").exists()  # no MFD is past 100

    # Only the items past delta become pairs: the same artifacts with every other item marked not hard.
    edited = tmp_path / "edited" / "round_1"
    shutil.copytree(run / "round_1", edited, ignore=shutil.ignore_patterns("student", "export", "eval"))
    rows = [json.loads(x) for x in (edited / "mfd.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        row["meta"]["hard"] = row["meta"]["hard"] and i % 2 == 0
    (edited / "mfd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    export_main([str(edited.parent)])
    half = _load(edited / "export/dpo.jsonl", cache)
    assert set(half["id"]) == {i for i in want if any(r["id"] == i and r["meta"]["hard"] for r in rows)} != set()
