"""Each round's data in the formats other trainers read (``tapir-export RUN_DIR``; the pipeline also writes
them at the end of every round, into ``round_<r>/export/``):

- ``sft_alpaca.json`` / ``sft_sharegpt.json``: the round's SFT set (``dataset.jsonl``; round 0: the warm-up
  set) as Alpaca (instruction/input/output) and ShareGPT (conversations of human/gpt turns) JSON arrays;
- ``dpo.jsonl``: preference pairs in TRL's DPO standard format ``{"prompt", "chosen", "rejected"}`` for every
  judged item past the MFD threshold: chosen = the teacher's answer, or its refined version when the round
  refined it; rejected = the student's answer (``mfd.jsonl``);
- ``dataset_info.json``: LLaMA-Factory's dataset registry entries for the three files (``dataset_dir`` =
  this directory), so ``dataset: tapir_round_1_alpaca`` (or ``..._sharegpt``, ``..._dpo`` with
  ``stage: dpo``) trains on them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tapir_exp.errors import DataError, TapirError
from tapir_exp.files import atomic_write_json
from tapir_exp.records import Example, load_examples, write_jsonl

EXPORT_DIR = "export"


def sft_set(round_dir: Path) -> list[Example]:
    """What the round trained on: ``dataset.jsonl`` (rounds >= 1) or ``warmup_data.jsonl`` (round 0)."""
    for name in ("dataset.jsonl", "warmup_data.jsonl"):
        if (round_dir / name).is_file():
            return load_examples(round_dir / name)
    return []


def preference_pairs(round_dir: Path, delta: float | None = None) -> list[dict[str, Any]]:
    """TRL DPO rows for the items past the MFD threshold (the run's ``hard`` flag, or ``mfd > delta``)."""
    if not (round_dir / "mfd.jsonl").is_file():
        return []
    refined = {ex.id: ex.output for ex in sft_set(round_dir) if ex.meta.get("refined")}
    rows = []
    for ex in load_examples(round_dir / "mfd.jsonl"):
        mfd, student = ex.meta.get("mfd"), (ex.meta.get("student") or "").strip()
        past = bool(ex.meta.get("hard")) if delta is None else (mfd is not None and mfd > delta)
        chosen = refined.get(ex.id, ex.output).strip()
        if past and student and chosen and chosen != student:
            rows.append({"prompt": ex.prompt, "chosen": chosen, "rejected": student, "id": ex.id, "task": ex.task,
                         "mfd": mfd, "chosen_source": "refined" if ex.id in refined else "teacher"})
    return rows


def export_round(round_dir: str | Path, out_dir: str | Path | None = None, delta: float | None = None,
                 prefix: str | None = None) -> dict[str, int]:
    """Write the round's SFT set, preference pairs and LLaMA-Factory registry; returns the counts."""
    round_dir = Path(round_dir)
    out = Path(out_dir) if out_dir else round_dir / EXPORT_DIR
    prefix = prefix or f"tapir_{round_dir.name}"
    sft = sft_set(round_dir)
    pairs = preference_pairs(round_dir, delta)
    info: dict[str, Any] = {}
    if sft:
        atomic_write_json(out / "sft_alpaca.json", [{"instruction": ex.instruction, "input": ex.input,
                                                     "output": ex.output} for ex in sft])
        atomic_write_json(out / "sft_sharegpt.json", [{"conversations": [
            {"from": "human", "value": ex.prompt}, {"from": "gpt", "value": ex.output}]} for ex in sft])
        info[f"{prefix}_alpaca"] = {"file_name": "sft_alpaca.json",
                                    "columns": {"prompt": "instruction", "query": "input", "response": "output"}}
        info[f"{prefix}_sharegpt"] = {"file_name": "sft_sharegpt.json", "formatting": "sharegpt",
                                      "columns": {"messages": "conversations"}}
    if pairs:
        write_jsonl(out / "dpo.jsonl", pairs)
        info[f"{prefix}_dpo"] = {"file_name": "dpo.jsonl", "ranking": True,
                                 "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}}
    if info:
        atomic_write_json(out / "dataset_info.json", info)
    return {"sft": len(sft), "pairs": len(pairs)}


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, delta: float | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(run_dir, None, None, "no such run directory")
    rounds = sorted((p for p in run_dir.glob("round_*") if p.name.split("_", 1)[1].isdigit()),
                    key=lambda p: int(p.name.split("_", 1)[1]))
    if not rounds:
        raise TapirError(f"{run_dir}: no round_<r>/ directory (is this a tapir run directory?)")
    return {p.name: export_round(p, Path(out_dir) / p.name if out_dir else None, delta) for p in rounds}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tapir-export", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a tapir run directory (outputs/<name>/<run_name>)")
    ap.add_argument("--out", default=None, help="write here (one sub-directory per round) instead of "
                                                "round_<r>/export/")
    ap.add_argument("--delta", type=float, default=None,
                    help="preference pairs for MFD > DELTA (default: the run's own hard items)")
    a = ap.parse_args(argv)
    for name, counts in export_run(a.run_dir, a.out, a.delta).items():
        where = Path(a.out) / name if a.out else Path(a.run_dir) / name / EXPORT_DIR
        print(f"tapir-export: {name}: {counts['sft']} SFT examples, {counts['pairs']} preference pairs -> {where}")
