"""The plan is the pipeline: `tapir mode=plan` asks, per role, step and round, exactly what a real run of the same
configuration asks the oracle, given the real run's hard fraction per round.

The real run is the fast configuration against the fake OpenAI server over HTTP (tests/support_pipeline.py),
with three deltas that make its requests depend on how many items are hard rather than on which ones (the plan
cannot know which items the judge finds hard, nor the labels the classifier gives them):
- ``steps.expand.per_round=1``: one expander request per round, whatever tasks the hard seeds have;
- ``steps.refine.default_style=stepwise``: every item of the mix is refined, whatever its task;
- ``steps.balance.enabled=false``: the mix keeps its parts' own task distribution, so it repeats no item
  (balancing to ``tasks.ratios`` repeats the items of short tasks, and a repeat is not asked again).

"Asks" counts requests sent plus those the cache answered (the usage ledger's ``requests`` + ``cache_hits``):
the fast run's tiny student can answer two rounds alike, so some of its judge prompts repeat and are served
by the cache, where the plan (like a real student) changes its answers every round.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tapir_exp.config_schema import RULES, check_config
from tapir_exp.errors import ConfigError
from tapir_exp.testing.openai_server import FakeOpenAIServer
from tests.support_pipeline import fast_overrides, responder, run_tapir

LABEL_FREE = ["steps.expand.per_round=1", "steps.refine.default_style=stepwise", "steps.balance.enabled=false"]


def asked(rows: list[dict]) -> dict[tuple[str, str, int], int]:
    out: dict[tuple[str, str, int], int] = {}
    for r in rows:
        n = int(r["requests"]) + int(r.get("cache_hits", 0))
        if n:
            out[(r["role"], r["step"], int(r["round"]))] = n
    return out


def only_dir(root: Path, name: str) -> Path:
    found = list((root / "outputs").glob(f"*/*/{name}"))
    assert len(found) == 1, found
    return found[0].parent


def stats(root: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under ``root`` but the ones any command writes (Hydra's, the log)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and p.name != "tapir.log" and ".hydra" not in p.parts}


@pytest.mark.slow
def test_plan_asks_what_the_run_asks(tmp_path):
    with FakeOpenAIServer(responder=responder) as server:
        overrides = fast_overrides(server.base_url) + LABEL_FREE
        run = run_tapir(overrides, tmp_path, timeout=900)
        assert run.returncode == 0, run.stderr[-4000:]
        sent_by_run = server.request_count
        run_dir = only_dir(tmp_path, "summary.json")
        ledger = json.loads((run_dir / "oracle_usage.json").read_text())
        assert sum(int(r["requests"]) for r in ledger["rows"]) == sent_by_run  # the ledger counts what the server saw
        rounds = json.loads((run_dir / "summary.json").read_text())["rounds"]
        fractions = [r["hard_fraction"] for r in rounds if r["round"] >= 1]
        assert fractions and all(0 < f < 1 for f in fractions), fractions
        before = stats(tmp_path)

        # the same command in plan mode: the same run directory (mode and plan.* do not name a run)
        plan = run_tapir(overrides + ["mode=plan", f"plan.hard_fraction=[{','.join(map(str, fractions))}]"],
                         tmp_path, timeout=300)
        assert plan.returncode == 0, plan.stderr[-4000:]
        assert server.request_count == sent_by_run  # the plan sent nothing

    assert (run_dir / "plan.json").is_file()
    doc = json.loads((run_dir / "plan.json").read_text())
    run_asks, plan_asks = asked(ledger["rows"]), asked(doc["rows"])
    # every step of the loop is there: teacher, labels, MFD, expansion (+ its teacher answers), refinement, eval
    assert {step for _, step, _ in run_asks} >= {"teacher", "classify", "mfd", "expand", "expand_teacher", "refine",
                                                "eval_alpaca", "eval_mt_bench"}
    assert plan_asks == run_asks
    # the plan's hard counts follow the fractions it was given, as the run's did
    assert doc["assumptions"]["hard_by_round"] == {str(r["round"]): r["hard_count"] for r in rounds if r["round"] >= 1}
    # nothing of the run's store, ledger, oracle cache or config snapshot changed: the plan wrote only its table
    # and its own snapshot beside the run's
    after = stats(tmp_path)
    assert set(after) - set(before) == {str((run_dir / n).relative_to(tmp_path))
                                        for n in ("plan.json", "plan.csv", "config.plan.yaml")}
    assert {k: v for k, v in after.items() if k in before} == before


@pytest.mark.parametrize("value,ok", [(0.3, True), ([0.6, 0.4], True), (1.5, False), ([0.2, "x"], False), ([], False)])
def test_hard_fraction_is_checked(value, ok):
    (rule,) = (r for r in RULES if r.key == "plan.hard_fraction")
    assert (rule.check(value) is None) == ok
    if not ok:
        with pytest.raises(ConfigError, match="'plan.hard_fraction': got .*, expected a number >= 0 and <= 1 or a list"):
            check_config({"mode": "plan", "plan": {"hard_fraction": value}}, (rule,))
