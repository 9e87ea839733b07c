"""Data at paper scale: everything the pipeline does to a pool except calling models, at 52K and 500K items.

    .venv/bin/python bench/data_scale.py --sizes 52000 500000

For each size, a synthetic Alpaca-format JSON file of N distinct instructions (with inputs and outputs of
Alpaca-like length) is written, then timed in one process:

- load         ``tapir_exp.data.load_pool`` (read + validate the JSON, as ``data=alpaca_json``)
- label        ``steps.classify.label_tasks(method=distill)``: 2,000 items labelled through the real oracle
               client over a *stub* backend (an in-process keyword classifier: no model; its calls are the
               "model calls" excluded from the goal), a TF-IDF classifier fit on them labels the rest
- balance      ``steps.balance.resample`` of the labelled pool to N/2 items at the TAPIR task ratios
- mix          ``steps.curriculum.build_mix``: alpha 0.5, N/2 items, 30 % of the pool hard, balanced
- bookkeeping  what the pipeline does per step around those: ``fresh()`` copies, ``records_hash`` for
               signatures, writing and re-loading the step artifact (``write_jsonl`` / ``load_examples``)
- dedup        ``NearDuplicateIndex`` over the pool (build) and 1,000 candidates checked against it
               (half are near-duplicates of pool items, half new): ``expand``'s filter
- plan         ``tapir mode=plan`` (``plan.estimate`` on the composed config: a dry run of the pipeline over all
               rounds with a planning oracle; loads the pool itself), reported apart from the data phases

Seconds per phase, the peak resident memory of the process after each phase, and per size the ratio of
500K to 52K time per item (<= 1 means the cost grows no faster than linearly). The baseline measured in
the same run is ``json.load`` of the same file: the floor for reading it at all.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tapir_exp.llm.base import Backend, ChatRequest, ChatResult  # noqa: E402

TASK_WORDS = {
    "Math": ["calculate", "sum", "equation", "percentage", "integral"],
    "Reasoning": ["deduce", "puzzle", "logic", "infer", "riddle"],
    "Code Generation": ["python", "function", "javascript", "implement", "class"],
    "Code Debug": ["bug", "fix", "error", "traceback", "exception"],
    "Writing": ["poem", "story", "essay", "letter", "slogan"],
    "Common-Sense": ["everyday", "kitchen", "weather", "commute", "garden"],
    "History": ["empire", "century", "revolution", "dynasty", "treaty"],
    "Biology": ["cell", "enzyme", "species", "protein", "organism"],
}
LABELS = list(TASK_WORDS)


class KeywordBackend(Backend):
    """The stub oracle: labels an instruction by its task keywords, in-process, instantly."""

    name = "stub"
    max_batch = 512

    async def complete(self, request: ChatRequest) -> ChatResult:
        text = request.messages[-1][1].rsplit("[Instruction]", 1)[-1].lower()
        label = next((lab for lab, kws in TASK_WORDS.items() if any(k in text for k in kws)), "Others")
        return ChatResult(request_id=request.id, text=label, finish_reason="stop", prompt_tokens=len(text) // 4,
                          completion_tokens=2)


def vocabulary(n: int, rng: random.Random) -> list[str]:
    syll = ["ka", "lo", "mi", "ne", "ru", "ta", "vi", "so", "pe", "du", "ga", "ri", "zo", "be", "fa", "hu"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syll) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def synthetic_pool(path: Path, n: int, seed: int = 0) -> None:
    """N distinct Alpaca records: instruction ~12 words (a task keyword among them), input on 40 %, output
    ~45 words — Alpaca's average lengths."""
    rng = random.Random(seed)
    vocab = vocabulary(20_000, rng)
    # Word frequencies follow Zipf's law, as in natural text (a uniform vocabulary would make nearly every
    # word bigram unique, which no real pool does).
    cum = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocab))))

    def pick(k: int) -> list[str]:
        return rng.choices(vocab, cum_weights=cum, k=k)

    rows, seen = [], set()
    while len(rows) < n:
        task = rng.choice(LABELS)
        words = pick(rng.randint(6, 16))
        words.insert(rng.randrange(len(words) + 1), rng.choice(TASK_WORDS[task]))
        instruction = " ".join(words).capitalize() + "."
        if instruction in seen:
            continue
        seen.add(instruction)
        rows.append({"instruction": instruction,
                     "input": " ".join(pick(rng.randint(5, 25))) if rng.random() < 0.4 else "",
                     "output": " ".join(pick(rng.randint(20, 70))) + "."})
    path.write_text(json.dumps(rows, indent=1))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_size(n: int, tmp: Path) -> dict[str, float]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tapir_exp.data import load_pool
    from tapir_exp.dedup import NearDuplicateIndex
    from tapir_exp.llm.oracle import Oracle
    from tapir_exp.plan import estimate
    from tapir_exp.records import fresh, load_examples, records_hash, write_jsonl
    from tapir_exp.steps import balance, classify, curriculum

    path = tmp / f"pool_{n}.json"
    t0 = time.perf_counter()
    synthetic_pool(path, n)
    print(f"[{n}] wrote {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s", flush=True)
    out: dict[str, float] = {}
    cpu: dict[str, float] = {}
    mem: dict[str, float] = {}

    def timed(name: str, fn):
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        out[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
        mem[name] = peak_mb()
        print(f"[{n}] {name:12s} {out[name]:7.2f} s wall {cpu[name]:7.2f} s CPU   peak RSS {mem[name]:7.0f} MB",
              flush=True)
        return result

    timed("json.load", lambda: len(json.loads(path.read_text())))  # baseline: reading the file at all
    data_cfg = OmegaConf.create({"path": str(path), "format": "alpaca", "on_error": "raise", "fields": {},
                                 "id_prefix": None, "use_given_responses": False, "pool_size": None})
    pool = timed("load", lambda: load_pool(data_cfg, None, 0))
    assert len(pool) == n

    oracle = Oracle({"backends": {"stub": {"_target_": f"{__name__}.KeywordBackend", "model": "stub"}},
                     "roles": {"classifier": {"backend": "stub", "max_tokens": 8, "temperature": 0.0}},
                     "limits": {"concurrency": 64, "timeout_s": 60, "max_retries": 0, "parse_retries": 0},
                     "cache": {"enabled": False}, "progress": False})
    try:
        labelled, counts = timed("label", lambda: classify.label_tasks(
            pool, oracle, labels=[*LABELS, "Others"], fallback="Others", method="distill", sample_size=2000,
            holdout_fraction=0.2, seed=0))
    finally:
        oracle.close()
    assert counts["distilled"] == n - 2000 and counts["holdout_agreement"] > 0.9, counts
    ratios = {"Math": 0.167, "Reasoning": 0.167, "Code Generation": 0.083, "Code Debug": 0.083, "Others": 0.041}
    timed("balance", lambda: balance.resample(labelled, ratios, n // 2, random.Random(0)))
    rng = random.Random(1)
    hard_ids = set(rng.sample(range(n), int(0.3 * n)))
    hard = [ex for i, ex in enumerate(labelled) if i in hard_ids]
    easy = [ex for i, ex in enumerate(labelled) if i not in hard_ids]
    timed("mix", lambda: curriculum.build_mix(hard, easy, alpha=0.5, size=n // 2, mode="curriculum",
                                              resample=balance.resample, ratios=ratios, seed=0, rnd=1))

    def bookkeeping():
        items = fresh(labelled)
        records_hash(items)
        write_jsonl(tmp / "step.jsonl", items)
        return len(load_examples(tmp / "step.jsonl"))

    timed("bookkeeping", bookkeeping)

    index = timed("dedup build", lambda: _index(NearDuplicateIndex, labelled))
    cands = []
    for i in range(1000):
        ex = labelled[rng.randrange(n)]
        if i % 2:  # a near-duplicate: one word of a pool instruction changed
            w = ex.prompt.split()
            w[rng.randrange(len(w))] = "zzqx"
            cands.append(" ".join(w))
        else:
            cands.append(" ".join(rng.choices(["novel", "fresh", "unseen", "other", "brand", "new"], k=8)) + f" {i}")
    found = timed("dedup 1000", lambda: sum(index.duplicate_of(c) is not None for c in cands))
    assert found >= 490, found  # the near-duplicates are caught, the new ones pass

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("tapir", overrides=["mode=plan", "oracle=openai", "data=alpaca_json", f"data.path={path}",
                                          "logger=none", "run_name=bench"])
    timed("plan", lambda: estimate(cfg, run_dir=tmp / "plan"))
    path.unlink()
    return {"wall": out, "cpu": cpu, "peak_mb": max(mem.values())}


def _index(cls, pool):
    index = cls(0.7)
    for ex in pool:
        index.add(ex.prompt)
    return index


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[52_000, 500_000])
    args = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="tapir-data-scale-") as tmp:
        for n in args.sizes:
            results[n] = run_size(n, Path(tmp))
    first = next(iter(results.values()))
    (n0, r0), (n1, r1) = list(results.items())[0], list(results.items())[-1]
    print("\nseconds (CPU / wall)" + "".join(f"{n:>22,}" for n in results) + "   per-item CPU growth")
    for ph in first["wall"]:
        row = "".join(f"{r['cpu'][ph]:10.2f} / {r['wall'][ph]:7.2f}  " for r in results.values())
        growth = f"   x{(r1['cpu'][ph] / n1) / max(1e-9, r0['cpu'][ph] / n0):.2f}" if n1 != n0 else ""
        print(f"{ph:20s} {row}{growth}")
    for n, r in results.items():
        # the plan is a dry run of the pipeline: it handles every oracle request of every round (without
        # sending it), so it is reported on its own next to the data phases
        total_cpu = sum(v for k, v in r["cpu"].items() if k not in ("json.load", "plan"))
        total_wall = sum(v for k, v in r["wall"].items() if k not in ("json.load", "plan"))
        print(f"{n:,}: data phases (all but the baseline and the plan) {total_cpu:.1f} s CPU / {total_wall:.1f} s "
              f"wall ({total_cpu / max(1e-9, r['cpu']['json.load']):.0f}x json.load); the plan's dry run "
              f"{r['cpu']['plan']:.1f} s CPU / {r['wall']['plan']:.1f} s wall; peak RSS {r['peak_mb']:.0f} MB")

if __name__ == "__main__":
    main()
