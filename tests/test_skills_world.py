"""The skills world: generators and exact solving, the oracle's roles, and TAPIR's mechanisms measured on
it (hard sets follow the student's failures, balancing hits targets, expansion keeps task and difficulty)."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from omegaconf import OmegaConf

from tapir_exp.llm import build_oracle
from tapir_exp.llm.base import ROLES
from tapir_exp.records import Example
from tapir_exp.skills import world
from tapir_exp.steps import balance, expand, judge, refine


def skills_oracle(tmp_path, error_rate=0.0, harder=False):
    cfg = OmegaConf.create({
        "backends": {"skills": {"_target_": "tapir_exp.skills.oracle.SkillsBackend", "seed": 3,
                                "classifier_error_rate": error_rate, "expand_harder": harder}},
        "roles": {r: {"backend": "skills", "max_tokens": 64, "temperature": 0.0, "scoring": "logprob"} for r in ROLES},
        "limits": {"concurrency": 16, "max_retries": 0, "parse_retries": 1},
        "cache": {"enabled": True, "path": str(tmp_path / "cache.sqlite")}, "prices": {}, "progress": False})
    return build_oracle(cfg, tmp_path)


@pytest.mark.parametrize("task", world.TASKS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_generators_round_trip(task, d):
    rng = random.Random(f"{task}{d}")
    for _ in range(20):
        inst = world.make(task, d, rng)
        assert world.identify(inst.instruction) == (task, d)
        assert world.solve(inst.instruction) == inst.answer is not None
        assert world.score_answer(inst.instruction, f"work...\nAnswer: {inst.answer}") == 10
        assert world.score_answer(inst.instruction, "Answer: nonsense") < 10


def test_difficulty_one_math_is_one_digit_and_top_level_others_is_not_a_copy():
    # issue 19: a copy of the word saturated at 100 % at every length, and a reversed 5-letter word after the
    # 4-layer student's warm-up, so difficulty 3 reverses a 7-letter word; a two-digit term at Math difficulty 1
    # left every student at 0 %, so difficulty 1 adds two digits
    rng = random.Random(0)
    for _ in range(20):
        a, b = world._ints(world.make("Math", 1, rng).instruction)
        assert 1 <= a <= 9 and 1 <= b <= 9
        for d in (1, 2):
            inst = world.make("Others", d, rng)
            assert inst.answer == inst.instruction.split(": ", 1)[1] and len(inst.answer) == 2 * d + 1
        inst = world.make("Others", 3, rng)
        word = inst.instruction.split(": ", 1)[1]
        assert inst.instruction.startswith(world.BACKWARDS) and len(word) == 7 and inst.answer == word[::-1]


def test_pool_mix_and_eval_sets_are_disjoint():
    pool = world.SkillsPool(n=400, mix={"Math": 3, "Others": 1}, seed=5)()
    counts = Counter(ex.task for ex in pool)
    # 3:1 drawn; a little under 3 because Math difficulty 1 has only ~70 distinct one-digit sums outside the
    # held-out set, so repeats of them are drawn again
    assert set(counts) == {"Math", "Others"} and 2.0 < counts["Math"] / counts["Others"] < 4.0
    held_out = {i.instruction for i in world.eval_set(5)}
    assert not held_out & {ex.instruction for ex in pool}
    # the eval set is fixed across runs (eval.skills.seed); every run's pool avoids that one, not its own
    other = world.SkillsPool(n=400, mix={"Others": 1}, difficulties=[1], seed=7, heldout_seed=1234,
                             heldout_per_cell=20)()
    fixed = {i.instruction for i in world.eval_set(1234, per_cell=20)}
    assert not fixed & {ex.instruction for ex in other}
    unguarded = world.SkillsPool(n=400, mix={"Others": 1}, difficulties=[1], seed=7, heldout_seed=7)()
    assert fixed & {ex.instruction for ex in unguarded}  # the guard matters: 400 of ~980 short words overlap
    assert pool == world.SkillsPool(n=400, mix={"Math": 3, "Others": 1}, seed=5)()  # deterministic


def examples(n_per_task: int, tasks=("Math", "Code Generation", "Others"), d=2, seed=0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for task in tasks:
        for i in range(n_per_task):
            inst = world.make(task, d, rng)
            out.append(Example(id=f"{task[:4]}-{i}", instruction=inst.instruction, output=f"Answer: {inst.answer}",
                               task=task, meta={"difficulty": d}))
    return out


def student_answering(items: list[Example], masters: set[str]) -> list[Example]:
    for ex in items:
        ex.meta["student"] = ex.output if ex.task in masters else "Answer: 0"
    return items


def test_oracle_roles(tmp_path):
    o = skills_oracle(tmp_path, error_rate=0.2)
    items = examples(100, tasks=("Math", "Reasoning", "Complex Format", "Grammar", "Others"))
    answers = o.chat_many("teacher", [o.request("teacher", ex.messages()) for ex in items], step="t", rnd=0)
    assert all(a.text == ex.output for a, ex in zip(answers, items, strict=True))
    from tapir_exp.steps.classify import label_tasks

    truth = [ex.task for ex in items]
    labelled, _ = label_tasks([Example.from_dict(ex.to_dict()) for ex in items], o, labels=world.TASKS + ["Music"],
                              fallback="Others")
    wrong = sum(a.task != t for a, t in zip(labelled, truth, strict=True)) / len(items)
    assert 0.13 < wrong < 0.27  # the configured 20 % error rate, on 500 items
    o.close()


def test_distilled_labels_follow_the_oracle_on_items_it_never_saw(tmp_path):
    """steps.classify.method=distill: the oracle labels a sample, a local classifier labels the rest."""
    from tapir_exp.steps.classify import label_tasks

    o = skills_oracle(tmp_path)
    items = examples(60, tasks=("Math", "Code Generation", "Complex Format", "Others"), seed=4)
    random.Random(0).shuffle(items)
    truth = {ex.id: ex.task for ex in items}
    for ex in items:
        ex.task = None
    labelled, counts = label_tasks(items, o, labels=world.TASKS, fallback="Others", method="distill",
                                   sample_size=80, holdout_fraction=0.25, seed=1)
    o.close()
    assert counts["oracle_labelled"] == 80 and counts["distilled"] == 160
    assert counts["holdout_agreement"] >= 0.9
    distilled = [ex for ex in labelled if ex.meta["task_source"] == "distilled"]
    assert len(distilled) == 160
    assert sum(ex.task == truth[ex.id] for ex in distilled) >= 0.9 * 160


def test_mfd_hard_set_follows_what_the_student_fails_and_shrinks_as_it_learns(tmp_path):
    o = skills_oracle(tmp_path)
    items = examples(10)
    judged, counts = judge.judge_mfd(student_answering(items, masters={"Others"}), o, delta=1.0, rnd=1)
    hard = Counter(ex.task for ex in judged if ex.meta["hard"])
    assert hard == {"Math": 10, "Code Generation": 10}  # exactly the tasks it fails
    assert all(ex.meta["judge"]["orders"]["ts"]["method"] == "logprob" for ex in judged)
    # a later student has mastered Math: its hard set shrinks to Code
    later, _ = judge.judge_mfd(student_answering(examples(10), masters={"Others", "Math"}), o, delta=1.0, rnd=2)
    assert Counter(ex.task for ex in later if ex.meta["hard"]) == {"Code Generation": 10}
    o.close()


def test_balancing_moves_the_mix_to_the_targets():
    items = examples(40, tasks=("Others",)) + examples(5, tasks=("Math",), seed=1) + examples(5, tasks=("Code Generation",), seed=2)
    out = balance.resample(items, {"Math": 0.5, "Code Generation": 0.25, "Others": 0.25}, 40, random.Random(0))
    assert Counter(ex.task for ex in out) == {"Math": 20, "Code Generation": 10, "Others": 10}


@pytest.mark.parametrize("harder", [False, True])
def test_expansion_adds_items_of_the_seeds_task_and_difficulty(tmp_path, harder):
    o = skills_oracle(tmp_path, harder=harder)
    hard = examples(6, tasks=("Math", "Code Generation"), d=2)
    new, counts = expand.expand_hard_seeds(hard, hard, o, ratios={"Math": 0.5, "Code Generation": 0.5}, total=10,
                                           shots=3, threshold=0.9, max_attempts_factor=3, seed=0, rnd=1)
    assert len(new) == 10 and Counter(ex.task for ex in new) == {"Math": 5, "Code Generation": 5}
    for ex in new:
        assert world.identify(ex.instruction) == (ex.task, 3 if harder else 2)
        assert ex.instruction not in {h.instruction for h in hard}
    o.close()


def test_refinement_writes_worked_steps_ending_in_the_answer(tmp_path):
    o = skills_oracle(tmp_path)
    calls: list[list[str]] = []
    chat_many = o._chat_many

    def recorded(role, requests, step, rnd):
        calls.append([r.id for r in requests])
        return chat_many(role, requests, step, rnd)

    o._chat_many = recorded
    items = examples(3, tasks=("Math", "Code Generation"))
    out, counts = refine.refine_responses(items, o, styles={"Math": "stepwise", "Code Generation": "code"},
                                          default_style=None)
    assert counts["refined"] == 6 and counts["by_style"] == {"stepwise": 3, "code": 3}
    assert len(calls) == 1 and len(calls[0]) == 6  # both styles in one call: they share the oracle's batches
    for ex in out:
        assert world.score_answer(ex.instruction, ex.output) == 10 and ex.output.count("\n") >= 1
    o.close()


@pytest.mark.slow
def test_reduced_skills_run_end_to_end(tmp_path):
    from tests.support_pipeline import SMALL_SKILLS_BASE, run_tapir

    proc = run_tapir(["experiment=skills_tapir", "logger=csv", "oracle.progress=false", "curriculum.rounds=2",
                      "curriculum.size=48", "data.generator.n=160", "steps.warmup.size=48", "steps.warmup.epochs=2",
                      "trainer.max_epochs=2", "steps.expand.per_round=12", "eval.skills.per_cell=3",
                      *SMALL_SKILLS_BASE], tmp_path,
                     timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]

    summary = json.loads(next((tmp_path / "outputs/skills").glob("*/summary.json")).read_text())
    rounds = summary["rounds"]
    assert len(rounds) == 3 and all("skills/accuracy" in r["eval"] for r in rounds)
    assert rounds[1]["hard_count"] > 0 and rounds[1]["expanded"] > 0
    # expanded instructions are judged like the pool (steps.expand.measure) and the hard fraction reported
    checked = [json.loads(line) for line in (next((tmp_path / "outputs/skills").glob("*/round_1/expand_mfd.jsonl"))
                                             .read_text().splitlines())]
    assert len(checked) == rounds[1]["expanded"]
    assert rounds[1]["expanded_hard_fraction"] == pytest.approx(sum(ex["meta"]["hard"] for ex in checked) / len(checked))
    assert set(rounds[1]["hard_by_task"]) <= set(world.TASKS)
    # the mechanisms, checked on the run's own artifacts (not on who wins)
    run = next((tmp_path / "outputs/skills").glob("*/summary.json")).parent
    from tapir_exp.records import load_examples

    judged = load_examples(run / "round_1/mfd.jsonl")
    for ex in judged:  # MFD: an exactly right student answer is never hard, a wrong one always is (delta 1)
        right = world.final_answer(ex.meta["student"]) == world.solve(ex.instruction)
        assert ex.meta["hard"] == (not right), (ex.instruction, ex.meta["student"], ex.meta["mfd"])
    difficulty = {ex.id: world.identify(ex.instruction)[1] for ex in judged}
    for ex in load_examples(run / "round_1/expand.jsonl"):  # expansion: the seeds' task and difficulty
        task, d = world.identify(ex.instruction)
        assert task == ex.task and d in {difficulty[s] for s in ex.meta["seeds"]}
    targets = {t: float(v) for t, v in summary["config"]["tasks"]["ratios"].items()}

    def distance(mix: dict) -> float:
        total = sum(mix.values())
        return sum(abs(mix.get(t, 0) / total - targets[t] / sum(targets.values())) for t in targets)

    # balancing: the trained mix is closer to the target ratios than the candidates it was drawn from
    assert distance(rounds[1]["task_mix_after"]) < distance(rounds[1]["task_mix_before"])


def test_report_pools_seeds_per_setting_with_intervals(tmp_path):
    from tapir_exp.report import main as report_main
    from tapir_exp.stats import wilson

    def run(setting: str, seed: int, math_acc: list[float], hard: list[int]) -> None:
        rounds = []
        for r, a in enumerate(math_acc):
            rec = {"round": r, "eval": {"skills/acc/Math": a, "skills/n/Math": 10, "skills/accuracy": a,
                                        "skills/n/all": 10}}
            if r:
                rec.update(judged_by_task={"Math": 20}, mfd_hard_by_task={"Math": hard[r - 1]})
            rounds.append(rec)
        d = tmp_path / "outputs/skills" / f"{setting},seed={seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"name": "skills", "run_name": f"{setting},seed={seed}",
                                                    "rounds": rounds}))

    run("experiment=skills_tapir", 1, [0.0, 0.3, 0.6], [18, 10])
    run("experiment=skills_tapir", 2, [0.0, 0.5, 0.8], [16, 6])
    run("experiment=skills_no_expand", 1, [0.0, 0.1, 0.2], [19, 17])
    out = tmp_path / "report"
    report_main([str(tmp_path / "outputs/skills"), "--out", str(out)])
    md = (out / "report.md").read_text()
    lo, hi = wilson(14, 20)  # seeds pooled: 6 + 8 correct of 20 in the last round
    assert f"| skills/experiment=skills_tapir | 2 | 0.70 [{lo:.2f}, {hi:.2f}]" in md
    assert "| skills/experiment=skills_no_expand | 1 | 0.20 [" in md
    from tapir_exp.report import find_runs, load, skills_tables

    acc, hard, tasks = skills_tables([load(r) for r in find_runs([str(tmp_path / "outputs/skills")])])
    assert tasks == ["Math", "all"]
    assert hard["skills/experiment=skills_tapir"]["Math"][2] == [16, 40]  # 10 + 6 hard of 20 + 20 judged
    for png in ("skills_accuracy.png", "skills_hard_fraction.png"):
        assert (out / png).stat().st_size > 10_000
