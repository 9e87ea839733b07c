"""The model-free logic of the TAPIR steps: balancing, the curriculum schedule and mix, near-duplicate
detection, expansion quotas, judge pair parsing and refinement style checks."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tapir_exp.dedup import NearDuplicateIndex, rouge_l, words
from tapir_exp.errors import ConfigError
from tapir_exp.records import Example
from tapir_exp.steps import balance, curriculum, expand, judge, refine


def make(n: int, task: str, prefix: str = "x", hard: bool = False) -> list[Example]:
    return [Example(id=f"{prefix}-{task}-{i}", instruction=f"{task} question {i}", output="a", task=task,
                    meta={"hard": hard}) for i in range(n)]


# ---------------------------------------------------------------------------- balance


def test_target_counts_sum_and_renormalise_over_present_labels():
    ratios = {"Math": 0.167, "Reasoning": 0.167, "Writing": 0.017, "Absent": 0.5}
    counts = balance.target_counts(ratios, {"Math", "Reasoning", "Writing"}, 100)
    assert sum(counts.values()) == 100
    assert "Absent" not in counts
    # Math:Writing keeps the 0.167:0.017 proportion among present labels (Absent's share redistributed)
    # exact shares 47.58 / 47.58 / 4.84: floors 47/47/4, the two spare items go to the largest remainders
    # (Writing .84, then Math .58 before Reasoning .58 by label order)
    assert counts == {"Math": 48, "Reasoning": 47, "Writing": 5}


def test_resample_downsamples_without_replacement_and_repeats_when_short():
    items = make(50, "Writing") + make(3, "Math")
    out = balance.resample(items, {"Writing": 0.5, "Math": 0.5}, 20, random.Random(0))
    dist = Counter(ex.task for ex in out)
    assert dist == {"Writing": 10, "Math": 10}
    writing_ids = [ex.id for ex in out if ex.task == "Writing"]
    assert len(set(writing_ids)) == 10  # no replacement when there are enough
    math = [ex for ex in out if ex.task == "Math"]
    # 3 distinct items repeated: each appears 3 or 4 times, every original at least 3 times
    origin = Counter(ex.meta.get("repeat_of", ex.id) for ex in math)
    assert set(origin) == {f"x-Math-{i}" for i in range(3)}
    assert sorted(origin.values()) == [3, 3, 4]
    assert len({ex.id for ex in math}) == 10  # repeats get distinct ids


def test_resample_without_ratios_keeps_the_sets_own_task_distribution():
    """Balancing off: a proportional draw (within rounding), never the target ratios, no repeats when enough."""
    items = make(30, "A") + make(10, "B") + make(20, "C")
    out = balance.resample(items, None, 12, random.Random(1))
    assert Counter(ex.task for ex in out) == {"A": 6, "B": 2, "C": 4}
    assert len({ex.id for ex in out}) == 12
    out = balance.resample(items, None, 7, random.Random(1))  # 3.5 / 1.17 / 2.33 -> 4 / 1 / 2
    assert Counter(ex.task for ex in out) == {"A": 4, "B": 1, "C": 2}


def test_distribution_counts_labels():
    assert balance.distribution(make(2, "A") + make(3, "B")) == {"B": 3, "A": 2}


# ---------------------------------------------------------------------------- curriculum


def test_alpha_schedules():
    lin = {"rounds": 3, "schedule": "linear", "alpha_start": 0.2, "alpha_end": 0.8}
    assert [curriculum.alpha_for_round(lin, r) for r in (1, 2, 3)] == pytest.approx([0.2, 0.5, 0.8])
    const = {"rounds": 3, "schedule": "constant", "alpha_start": 0.4, "alpha_end": 0.9}
    assert {curriculum.alpha_for_round(const, r) for r in (1, 2, 3)} == {0.4}
    lst = {"rounds": 2, "schedule": "list", "alphas": [0.1, 0.9]}
    assert curriculum.alpha_for_round(lst, 2) == 0.9


def test_alpha_schedule_errors_name_the_key():
    with pytest.raises(ConfigError, match="curriculum.alphas"):
        curriculum.alpha_for_round({"rounds": 3, "schedule": "list", "alphas": [0.1]}, 1)
    with pytest.raises(ConfigError, match="curriculum.schedule"):
        curriculum.alpha_for_round({"rounds": 3, "schedule": "cubic"}, 1)
    with pytest.raises(ConfigError, match="\\[0, 1\\]"):
        curriculum.alpha_for_round({"rounds": 1, "schedule": "constant", "alpha_start": 1.5}, 1)


def test_build_mix_hits_alpha_and_balances_each_part():
    hard = make(30, "Math", "h", hard=True) + make(30, "Writing", "h", hard=True)
    easy = make(40, "Math", "e") + make(40, "Writing", "e")
    mix, counts = curriculum.build_mix(hard, easy, alpha=0.25, size=40, mode="curriculum", resample=balance.resample,
                                       ratios={"Math": 3, "Writing": 1}, seed=0, rnd=1)
    assert len(mix) == 40
    assert counts["hard"] == 10 and counts["easy"] == 30
    hard_in = [ex for ex in mix if ex.meta["hard"]]
    assert Counter(ex.task for ex in hard_in) == {"Math": 8, "Writing": 2}  # 3:1 within the hard part (10)
    easy_in = [ex for ex in mix if not ex.meta["hard"]]
    assert Counter(ex.task for ex in easy_in) == {"Math": 23, "Writing": 7}  # 22.5:7.5, tie -> label order


def test_build_mix_never_invents_hard_items():
    hard = make(3, "Math", "h", hard=True)
    easy = make(50, "Math", "e")
    mix, counts = curriculum.build_mix(hard, easy, alpha=0.9, size=20, mode="curriculum", resample=balance.resample,
                                       ratios=None, seed=0, rnd=1)
    assert counts["hard"] == 3 and counts["easy"] == 17
    assert counts["alpha_actual"] == pytest.approx(0.15)


def test_build_mix_all_mode_uses_everything():
    hard = make(5, "A", "h", hard=True)
    easy = make(5, "B", "e")
    mix, counts = curriculum.build_mix(hard, easy, alpha=0.0, size=10, mode="all", resample=balance.resample,
                                       ratios=None, seed=0, rnd=1)
    assert sorted(ex.id for ex in mix) == sorted(ex.id for ex in hard + easy)


def test_single_round_trains_the_whole_schedules_budget_in_one_round():
    cur = {"rounds": 3, "schedule": "linear", "alpha_start": 0.2, "alpha_end": 0.8, "size": 10, "mix": "curriculum"}
    assert curriculum.rounds_to_run(cur) == 3
    assert curriculum.round_plan(cur, 2, 100) == (pytest.approx(0.5), 10, "curriculum")
    collapsed = {**cur, "single_round": True}
    assert curriculum.rounds_to_run(collapsed) == 1
    assert curriculum.round_plan(collapsed, 1, 100) == (None, 30, "all")
    assert curriculum.round_plan({**collapsed, "size": [5, 6, 7]}, 1, 100)[1] == 18


def test_build_mix_all_counts_hard_items_by_membership():
    hard = make(4, "A", "h", hard=True)
    easy = make(4, "B", "e")
    expanded_easy = [Example(id="x", instruction="new", output="o", task="B", source="expanded", meta={"hard": False})]
    mix, counts = curriculum.build_mix(hard, easy + expanded_easy, alpha=None, size=18, mode="all",
                                       resample=balance.resample, ratios=None, seed=0, rnd=1)
    assert len(mix) == 18 and counts["hard"] == 8  # 4 hard items twice each; the verified-easy new item is easy


def test_size_for_round_variants():
    assert curriculum.size_for_round({"size": None}, 1, 77) == 77
    assert curriculum.size_for_round({"size": 10}, 2, 77) == 10
    assert curriculum.size_for_round({"size": [5, 6]}, 2, 77) == 6
    with pytest.raises(ConfigError):
        curriculum.size_for_round({"size": [5]}, 2, 77)


# ---------------------------------------------------------------------------- dedup


def test_rouge_l_values():
    assert rouge_l(words("a b c d"), words("a b c d")) == 1.0
    assert rouge_l(words("a b c d"), words("e f g")) == 0.0
    # LCS "a c d" = 3 of 4 and 3 of 5 -> F1 = 2*(.75*.6)/(1.35)
    assert rouge_l(words("a b c d"), words("a x c d y")) == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_near_duplicate_index():
    idx = NearDuplicateIndex(threshold=0.7)
    idx.add("Write a Python function that reverses a list of integers.")
    idx.add("Explain photosynthesis to a ten year old.")
    assert idx.duplicate_of("write a python function that reverses a list of integers!")[1] == 1.0
    near = idx.duplicate_of("Write a Python function that reverses a list of strings.")
    assert near is not None and near[0] == 0 and 0.7 <= near[1] < 1.0
    assert idx.duplicate_of("Compute the determinant of a 3x3 matrix by cofactor expansion.") is None


@pytest.mark.parametrize("merge_at", [1, 1 << 16])
def test_near_duplicate_index_ranks_candidates_and_sees_texts_added_between_queries(merge_at):
    idx = NearDuplicateIndex(threshold=0.7)
    idx._MERGE_AT = merge_at  # 1: every query merges the texts added since; default: they are searched unsorted
    for text in ("red fox jumps high", "jumps high over walls", "red fox jumps high over walls"):
        idx.add(text)
    # text 2 shares the most bigrams, so it is compared first (text 0 would also pass, at 0.73)
    found = idx.duplicate_of("red fox jumps high over walls today")
    assert found is not None and found[0] == 2 and found[1] == pytest.approx(2 * (6 / 7) / (1 + 6 / 7))
    assert idx.duplicate_of("red fox sleeps") is None
    idx.add("blue whales sing to each other at dawn")  # after the index was searched once
    found = idx.duplicate_of("blue whales sing to each other at dusk")
    assert found is not None and found[0] == 3


# ---------------------------------------------------------------------------- expansion quotas


def test_expand_plan_counts_follow_ratios_over_tasks_with_hard_seeds():
    hard = make(2, "Math", hard=True) + make(5, "Writing", hard=True)
    counts = expand.plan_counts(hard, {"Math": 0.167, "Writing": 0.017, "Code Debug": 0.083}, 20)
    assert sum(counts.values()) == 20
    assert set(counts) == {"Math", "Writing"}  # no hard seed in Code Debug -> nothing to expand from
    assert counts["Math"] > counts["Writing"]


def test_expand_plan_counts_follow_the_hard_set_without_ratios():
    hard = make(6, "Math", hard=True) + make(3, "Writing", hard=True) + make(1, "Code Debug", hard=True)
    assert expand.plan_counts(hard, None, 20) == {"Code Debug": 2, "Math": 12, "Writing": 6}


def test_expand_validate():
    assert expand.validate("too short") == "too short"
    assert expand.validate("Sort this list of words by length, then alphabetically.") is None


# ---------------------------------------------------------------------------- judge / refine parsing


@pytest.mark.parametrize("text,expected", [("[[7, 4]]", (7.0, 4.0)), ("Scores: [[8.5,3]] ok", (8.5, 3.0)),
                                           ("[[10 ; 1]]", (10.0, 1.0))])
def test_parse_score_pair(text, expected):
    assert judge.parse_score_pair(text) == expected


def test_parse_score_pair_reads_the_last_pair_after_a_justification():
    assert judge.parse_score_pair("Unlike a [[1, 10]] scale answer, A is better.\n[[8, 3]]") == (8.0, 3.0)


def test_pair_from_logprobs_takes_the_first_two_rating_positions():
    import math

    lp = math.log
    positions = [{"[[": 0.0}, {"7": lp(0.5), "8": lp(0.5)}, {",": 0.0}, {" 4": lp(0.9), "x": lp(0.1)}, {"]]": 0.0}]
    assert judge.pair_from_logprobs(positions) == pytest.approx((7.5, 4.0))
    # "10" written as "1" + "0": the "0" is not a second rating position
    assert judge.pair_from_logprobs([{"1": 0.0}, {"0": 0.0}, {"]]": 0.0}]) is None


def test_is_hard_compares_with_delta():
    assert judge.is_hard(1.0, 1.0, "ge") and not judge.is_hard(1.0, 1.0, "gt")
    assert not judge.is_hard(0.5, 1.0, "ge") and not judge.is_hard(None, -5.0, "ge")
    with pytest.raises(ValueError, match="compare"):
        judge.is_hard(2.0, 1.0, ">")


@pytest.mark.parametrize("text", ["[[7]]", "7, 4", "[[11, 3]]", "[[0, 5]]", ""])
def test_parse_score_pair_rejects(text):
    with pytest.raises(ValueError):
        judge.parse_score_pair(text)


def test_refine_checks():
    assert refine.CHECKS["stepwise"]("1. add\n2. check\nAnswer: 42") .endswith("42")
    assert refine.CHECKS["stepwise"]("**Final answer:** 42")
    with pytest.raises(ValueError):
        refine.CHECKS["stepwise"]("The answer is 42")
    assert refine.CHECKS["code"]("```python\nprint(1)\n```\nPrints one.")
    with pytest.raises(ValueError):
        refine.CHECKS["code"]("print(1)")
    assert refine.style_for("Math", {"Math": "stepwise"}, None) == "stepwise"
    assert refine.style_for("Art", {"Math": "stepwise"}, None) is None
    assert refine.style_for("Art", {"Math": "stepwise"}, "concise") == "concise"


def test_build_mix_does_not_repeat_a_few_easy_items_when_hard_ones_are_left():
    hard = make(30, "Math", "h", hard=True)
    easy = make(2, "Reasoning", "e")
    mix, counts = curriculum.build_mix(hard, easy, alpha=0.3, size=20, mode="curriculum", resample=balance.resample,
                                       ratios=None, seed=0, rnd=1)
    assert counts["easy"] == 2 and counts["hard"] == 18 and len({e.id for e in mix}) == 20
    # both parts short: now items repeat to fill the round
    mix, counts = curriculum.build_mix(hard[:5], easy, alpha=0.5, size=10, mode="curriculum",
                                       resample=balance.resample, ratios=None, seed=0, rnd=1)
    assert len(mix) == 10 and counts["easy"] == 2 and counts["hard"] == 8


def test_fresh_copies_are_independent_and_records_hash_keeps_recorded_signatures():
    from tapir_exp.files import stable_hash
    from tapir_exp.records import fresh, records_hash

    items = [Example("a", "Sum 2 and 3.", task="Math", meta={"judge": {"scores": [7, 9]}, "tags": ["x"]}),
             Example("b", "Écris un poème.", input="court", output="…")]
    copies = fresh(items)
    assert copies == items
    copies[0].meta["judge"]["scores"].append(1)
    copies[0].meta["tags"][0] = "y"
    assert items[0].meta == {"judge": {"scores": [7, 9]}, "tags": ["x"]}
    # the hash a step's signature names: the same as before it moved (runs recorded then still resume)
    assert records_hash(items) == stable_hash([ex.to_dict() for ex in items])
    assert records_hash(items) != records_hash(copies)
