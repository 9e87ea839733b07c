"""The embedded local oracle's greedy answers on the demo pool, before and after a change, and where its time
goes (prefill vs decode, per request kind).

    .venv/bin/python bench/oracle_answers.py --against /tmp/old-checkout [--items 32]
    .venv/bin/python bench/oracle_answers.py --against . --override oracle.backends.local.dtype=bfloat16

Each checkout runs in its own process with the default oracle config (oracle=local, cache off): the teacher
answers the demo pool, then the MFD judge (format single, log-probability scoring) rates each answer
against a copy cut to its first half, as the pipeline asks it; the expander samples 8 new instructions
from the pool (one seed per request); the refiner rewrites the answers, the items given each styled task in
turn. ``--override`` changes this checkout's config only. Prints the wall time of each checkout, the
ratio, the per-kind profile of this checkout (``LocalBackend.profile``), and every answer or rating that
differs (texts must be identical; ratings are compared to 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r'''
import inspect, json, sys, time
try:  # OpenMP's wait policy as the CLI sets it, before torch is imported (older checkouts: their default)
    from tapir_exp.cli import cpu_thread_defaults
    cpu_thread_defaults()
except ImportError:
    pass
from hydra import compose, initialize_config_dir
from tapir_exp.config import packaged_dir
from tapir_exp.data import load_pool
from tapir_exp.llm import build_oracle
from tapir_exp.steps import judge, respond

items, cache_dir, out, extra = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
with initialize_config_dir(config_dir=str(packaged_dir("conf")), version_base="1.3"):
    cfg = compose("tapir", overrides=["oracle.cache.enabled=false", f"oracle.backends.local.cache_dir={cache_dir}",
                                      "oracle.progress=false", "paths.root=" + cache_dir, *extra])
pool = load_pool(cfg.data, None, int(cfg.seed))[:items]
oracle = build_oracle(cfg.oracle, None)


def at(fn, r):
    """The round keyword of ``fn`` in either checkout (``rnd`` since the rename, ``round`` before)."""
    return {("rnd" if "rnd" in inspect.signature(fn).parameters else "round"): r}


t0 = time.perf_counter()
answered, _ = respond.teacher_answers(pool, oracle, step="teacher", **at(respond.teacher_answers, 0))
t_teacher = time.perf_counter() - t0
for ex in answered:
    ex.meta["student"] = ex.output[: len(ex.output) // 2]
m = cfg.steps.mfd
t0 = time.perf_counter()
judged, _ = judge.judge_mfd(answered, oracle, delta=float(m.delta), compare=str(m.compare), both_orders=True,
                            scoring=m.scoring, fmt=str(m.format), justification_tokens=0, step="mfd",
                            **at(judge.judge_mfd, 1))
t_judge = time.perf_counter() - t0
# The expander samples (temperature > 0, one seed per request): every item of the pool counts as a hard seed.
from tapir_exp.steps import expand
t0 = time.perf_counter()
expanded = expand.expand_hard_seeds(answered, answered, oracle, ratios=None, total=8, seed=int(cfg.seed),
                                    step="expand", **at(expand.expand_hard_seeds, 1))
t_expand = time.perf_counter() - t0
expanded = expanded[0] if isinstance(expanded, tuple) else expanded
# The refiner rewrites the teacher's answers, the items given the styled tasks in turn (and every fifth no
# style), so every style's requests meet in one step as they do in a round.
import copy
from tapir_exp.steps import refine
styles = dict(cfg.steps.refine.styles or {})
tasks = sorted(styles) + [None]
to_refine = copy.deepcopy(answered)
for i, ex in enumerate(to_refine):
    ex.task = tasks[i % len(tasks)]
t0 = time.perf_counter()
refined, _ = refine.refine_responses(to_refine, oracle, styles=styles, default_style=None, step="refine",
                                     **at(refine.refine_responses, 1))
t_refine = time.perf_counter() - t0
backend = oracle.backend_for("teacher")
prof = {}
if hasattr(backend, "profile"):  # this checkout (the profile is new)
    from tapir_exp.llm.local import profile_summary
    prof = profile_summary(backend.profile)
json.dump({"answers": {ex.id: ex.output for ex in answered},
           "mfd": {ex.id: ex.meta.get("mfd") for ex in judged},
           "expansions": [ex.prompt for ex in expanded],
           "refined": {ex.id: ex.output for ex in refined},
           "seconds": {"load": getattr(backend, "load_seconds", None), "teacher": t_teacher, "judge": t_judge,
                       "expand": t_expand, "refine": t_refine},
           "profile": prof}, open(out, "w"), indent=1)
oracle.close()
'''


def run(src: Path, items: int, cache_dir: str, overrides: list[str] = ()) -> dict:
    out = tempfile.mktemp(suffix=".json")
    env = {k: v for k, v in os.environ.items() if k != "TAPIR_CACHE"}
    env.update(PYTHONPATH=str(src), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", WORKER, str(items), cache_dir, out, *overrides], env=env, check=True, cwd=src)
    doc = json.loads(Path(out).read_text())
    doc["wall"] = time.perf_counter() - t0
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", type=Path, required=True, help="the checkout to compare with (e.g. main)")
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--override", action="append", default=[],
                    help="a config override for this checkout only, e.g. oracle.backends.local.dtype=bfloat16")
    args = ap.parse_args()
    cache_dir = tempfile.mkdtemp(prefix="tapir-oracle-bench-")
    sys.path.insert(0, str(REPO))  # this checkout's package, whatever the venv's editable install points at
    from tapir_exp.model_files import smollm2_hf_dir

    try:
        smollm2_hf_dir(cache_dir)  # converted once here, so neither side's timing includes the conversion
        before = run(args.against.resolve(), args.items, cache_dir)
        after = run(REPO, args.items, cache_dir, args.override)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, d in (("against", before), ("this checkout", after)):
        s = d["seconds"]
        print(f"{name:>14}: wall {d['wall']:.1f} s (model load {s['load'] or 0:.1f}, teacher {s['teacher']:.1f}, "
              f"judge {s['judge']:.1f}, expand {s.get('expand', 0):.1f}, refine {s.get('refine', 0):.1f})")
    print("this / against: " + ", ".join(f"{k} x{after['seconds'][k] / before['seconds'][k]:.2f}"
                                         for k in ("teacher", "judge", "expand", "refine")))
    print("profile of this checkout, per request kind:")
    for kind, p in after["profile"].items():
        print(f"  {kind:<10} {int(p['requests'])} requests in {int(p['batches'])} batches; prefill "
              f"{int(p['padded_prompt_tokens'])} tokens ({p['padding_share']:.0%} padding) in {p['prefill_s']:.1f} s = "
              f"{p['prefill_tok_per_s']} tok/s; decode {int(p['decode_rows'])} tokens in {p['decode_s']:.1f} s = "
              f"{p['decode_tok_per_s']} tok/s")
    diffs = [k for k in before["answers"] if before["answers"][k] != after["answers"].get(k)]
    rdiffs = [k for k in before["mfd"] if (before["mfd"][k] is None) != (after["mfd"].get(k) is None)
              or (before["mfd"][k] is not None and abs(before["mfd"][k] - after["mfd"][k]) > 1e-4)]
    print(f"greedy teacher answers: {len(before['answers']) - len(diffs)} of {len(before['answers'])} identical")
    for k in diffs:
        print(f"  {k}:\n    before: {before['answers'][k]!r}\n    after:  {after['answers'].get(k)!r}")
    print(f"MFD values: {len(before['mfd']) - len(rdiffs)} of {len(before['mfd'])} equal within 1e-4")
    for k in rdiffs:
        print(f"  {k}: {before['mfd'][k]} -> {after['mfd'].get(k)}")
    same = sum(a == b for a, b in zip(before["expansions"], after["expansions"], strict=False))
    print(f"sampled expansions (one seed each): {same} of {len(before['expansions'])} identical"
          + ("" if len(before["expansions"]) == len(after["expansions"]) else
             f" ({len(before['expansions'])} before, {len(after['expansions'])} after)"))
    for a, b in zip(before["expansions"], after["expansions"], strict=False):
        if a != b:
            print(f"    before: {a!r}\n    after:  {b!r}")
    fdiffs = [k for k in before["refined"] if before["refined"][k] != after["refined"].get(k)]
    print(f"refined answers (greedy; sampled on a parse retry, one seed each): "
          f"{len(before['refined']) - len(fdiffs)} of {len(before['refined'])} identical")
    for k in fdiffs:
        print(f"  {k}:\n    before: {before['refined'][k]!r}\n    after:  {after['refined'].get(k)!r}")


if __name__ == "__main__":
    main()
