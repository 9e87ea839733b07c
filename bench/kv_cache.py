"""A decoding step of the local oracle with transformers' concatenating cache against ours, which appends in
place (``tapir_exp/llm/kv_cache.py``), in one process on the embedded model (SmolLM2-135M-Instruct).

    .venv/bin/python bench/kv_cache.py [--rows 32] [--prompt 250] [--steps 16] [--pairs 6]

Both caches start from the same prompt's keys and values (one prefill, copied); each pair runs the two
back to back, alternating which goes first, so a machine whose speed drifts (a shared or throttled host)
biases neither. Prints each cache's median milliseconds per decoding step and the median of the per-pair
ratios (ours / transformers'; below 1 is faster), with their range.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32, help="batch size (the backend's default)")
    ap.add_argument("--prompt", type=int, default=250, help="prompt tokens (a judge prompt has ~230)")
    ap.add_argument("--steps", type=int, default=16, help="decoding steps timed per run")
    ap.add_argument("--pairs", type=int, default=6, help="pairs of runs (each pair: both caches, both orders)")
    args = ap.parse_args()

    from tapir_exp.cli import cpu_thread_defaults

    cpu_thread_defaults()  # the CLI's OpenMP policy, before torch starts its threads
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from tapir_exp.llm.kv_cache import GrowingCache
    from tapir_exp.model_files import smollm2_hf_dir

    path = smollm2_hf_dir(Path(os.environ.get("TAPIR_CACHE", Path.home() / ".cache/tapir")) / "models", "bench")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows, length, steps = args.rows, args.prompt, args.steps
    ids = torch.randint(100, 40_000, (rows, length), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        prompt = model(input_ids=ids, use_cache=True, logits_to_keep=1).cache
    prompt_kv = [(layer.keys.clone(), layer.values.clone()) for layer in prompt.layers]

    def ms_per_step(ours: bool) -> float:
        with torch.inference_mode():
            cache = GrowingCache(reserve=steps + 1) if ours else DynamicCache()
            for i, (k, v) in enumerate(prompt_kv):
                cache.update(k.clone(), v.clone(), i)
            mask = torch.ones(rows, length + 1, dtype=torch.long)
            t0 = time.perf_counter()
            for _ in range(steps):
                model(input_ids=ids[:, :1], cache=cache, attention_mask=mask, use_cache=True, logits_to_keep=1)
                mask = torch.cat([mask, mask[:, :1]], dim=1)
            return (time.perf_counter() - t0) / steps * 1000

    theirs, ours, ratios = [], [], []
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        got = {which: ms_per_step(which) for which in order}
        theirs.append(got[False]), ours.append(got[True]), ratios.append(got[True] / got[False])
    print(f"{rows} rows, {length}-token prompt, {steps} steps x {args.pairs} pairs, "
          f"{torch.get_num_threads()} torch threads")
    print(f"transformers' DynamicCache: {statistics.median(theirs):.0f} ms/step (median)")
    print(f"in-place GrowingCache:      {statistics.median(ours):.0f} ms/step (median)")
    print(f"ratio ours/theirs: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
