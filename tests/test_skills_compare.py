"""The skills world's pre-registered analysis: paired differences from full TAPIR (same seeds, same items),
checked on made-up outcomes whose means and intervals are computed by hand below."""

from __future__ import annotations

import json

import pytest

from tapir_exp.skills.compare import WARMUP, differences
from tapir_exp.stats import paired_difference

# reference (skills_tapir) and setting outcomes per seed: task -> [item 1, item 2] correct
REF = {1: {"Math": [0, 1], "Others": [1, 1]}, 2: {"Math": [0, 0], "Others": [0, 1]}}
ABL = {1: {"Math": [1, 1], "Others": [1, 0]}, 2: {"Math": [1, 1], "Others": [0, 1]}, 3: {"Math": [1, 1], "Others": [1, 1]}}


def write_run(root, setting: str, seed: int, last: dict[str, list[int]], warm: dict[str, list[int]] | None = None):
    d = root / f"{setting},seed={seed}"
    for r, outcomes in ((0, warm), (1, last)):
        if outcomes is None:
            continue
        (d / f"round_{r}" / "eval").mkdir(parents=True)
        rows = [{"task": t, "difficulty": 1, "instruction": f"{t} item {i}", "answer": "x", "output": "x",
                 "correct": bool(ok)} for t, oks in outcomes.items() for i, ok in enumerate(oks)]
        (d / f"round_{r}" / "eval" / "skills_outputs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    rounds = [{"round": 0, "eval": {}}, {"round": 1, "eval": {}}]
    (d / "summary.json").write_text(json.dumps({"name": "skills", "run_name": f"{setting},seed={seed}", "rounds": rounds}))


def test_paired_difference_by_hand():
    # d = [1, 0, 0, -1, 1, 1, 0, 0]: mean 0.25; sum of squared deviations 3.5, var 3.5 / 7 = 0.5,
    # sd 0.7071, se 0.7071 / sqrt(8) = 0.25, half-width 1.96 * 0.25 = 0.49
    mean, lo, hi, n = paired_difference([1, 0, 1, 0, 1, 1, 0, 1], [0, 0, 1, 1, 0, 0, 0, 1])
    assert n == 8 and mean == pytest.approx(0.25)
    assert (lo, hi) == (pytest.approx(-0.24), pytest.approx(0.74))
    with pytest.raises(ValueError, match="pairs must match"):
        paired_difference([1], [1, 0])


def test_differences_pair_seeds_and_items_per_family(tmp_path):
    from tapir_exp.report import find_runs, load
    from tapir_exp.report import main as report_main

    root = tmp_path / "outputs" / "skills"
    for seed, last in REF.items():  # the warm-up student got everything wrong
        write_run(root, "experiment=skills_tapir", seed, last, warm={t: [0, 0] for t in last})
    for seed, last in ABL.items():  # seed 3 has no reference run: it must not be paired
        write_run(root, "experiment=skills_no_balance", seed, last)
    diffs = differences([load(r) for r in find_runs([str(root)])])
    abl = diffs["skills/experiment=skills_no_balance"]
    # d per (seed, item): Math [1, 0, 1, 1], Others [0, -1, 0, 0]; overall the 8 pairs of the test above
    assert abl["all"][3] == 8 and abl["all"][0] == pytest.approx(0.25)
    assert abl["all"][1:3] == (pytest.approx(-0.24), pytest.approx(0.74))
    # Math: mean 0.75, squared deviations 0.75 -> var 0.25, sd 0.5, se 0.25 -> 0.75 +- 0.49
    assert abl["Math"] == (pytest.approx(0.75), pytest.approx(0.26), pytest.approx(1.24), 4)
    assert abl["Others"] == (pytest.approx(-0.25), pytest.approx(-0.74), pytest.approx(0.24), 4)
    # warm-up (all wrong) minus reference: d = [0, -1, -1, -1, 0, 0, 0, -1], mean -0.5, var (8 * 0.25) / 7,
    # sd 0.5345, se 0.18898, half-width 0.37041
    warm = diffs[WARMUP]["all"]
    assert warm[0] == pytest.approx(-0.5) and warm[1] == pytest.approx(-0.87041, abs=1e-5)
    assert warm[2] == pytest.approx(-0.12959, abs=1e-5)
    out = tmp_path / "report"
    report_main([str(root), "--out", str(out)])
    md = (out / "report.md").read_text()
    assert "| skills/experiment=skills_no_balance | 8 | +0.750 [+0.260, +1.240] | -0.250 [-0.740, +0.240] | " \
           "+0.250 [-0.240, +0.740] |" in md
    assert f"| {WARMUP} | 8 |" in md


def test_differences_from_the_warm_up_student_and_from_another_setting(tmp_path):
    """Issue 19, item 3: every setting also against the warm-up student and against plain distillation (here
    a generic setting stands in for it); the report prints the three tables."""
    from tapir_exp.report import find_runs, load
    from tapir_exp.report import main as report_main

    root = tmp_path / "outputs" / "skills"
    for seed, last in REF.items():
        write_run(root, "experiment=skills_tapir", seed, last, warm={t: [0, 0] for t in last})
    for seed, last in ABL.items():
        write_run(root, "experiment=skills_plain_distill", seed, last)
    runs = [load(r) for r in find_runs([str(root)])]
    from_warm = differences(runs, WARMUP)
    assert WARMUP not in from_warm  # the reference is not compared with itself
    # TAPIR minus the warm-up (all wrong): the negation of the warm-up row of the test above
    tapir = from_warm["skills/experiment=skills_tapir"]["all"]
    assert tapir[0] == pytest.approx(0.5) and tapir[1:3] == (pytest.approx(0.12959, abs=1e-5),
                                                              pytest.approx(0.87041, abs=1e-5))
    # plain distillation minus the warm-up, seeds 1 and 2 only (seed 3 has no warm-up student):
    # d = [1, 1, 1, 0, 1, 1, 0, 1], mean 0.75, var 1.5 / 7, sd 0.46291, se 0.16366, half-width 0.32078
    plain = from_warm["skills/experiment=skills_plain_distill"]["all"]
    assert plain[0] == pytest.approx(0.75) and plain[3] == 8
    assert plain[1:3] == (pytest.approx(0.42922, abs=1e-5), pytest.approx(1.07078, abs=1e-5))
    # TAPIR minus plain distillation: the negation of plain minus TAPIR (0.25 [-0.24, 0.74])
    from_plain = differences(runs, "skills_plain_distill")
    assert from_plain["skills/experiment=skills_tapir"]["all"][:3] == (
        pytest.approx(-0.25), pytest.approx(-0.74), pytest.approx(0.24))
    assert from_plain[WARMUP]["all"][0] == pytest.approx(-0.75)
    assert differences(runs, "skills_no_such_setting") == {}
    out = tmp_path / "report"
    report_main([str(root), "--out", str(out)])
    md = (out / "report.md").read_text()
    for what in ("skills_tapir", "the warm-up student", "skills_plain_distill"):
        assert f"## Skills world: difference from {what} (paired" in md
    from_warm_md = md.split("difference from the warm-up student")[1].split("## ")[0]
    plain_row = "| skills/experiment=skills_plain_distill |"
    row = next(x for x in from_warm_md.splitlines() if x.startswith(plain_row))
    assert row.startswith(plain_row + " 8 |") and row.endswith("| +0.750 [+0.429, +1.071] |")


def test_warm_up_against_item_2s_target_per_seed_and_pooled(tmp_path):
    """Issue 19, item 2's check in the report: the warm-up student (round 0 of the TAPIR runs) per seed and pooled,
    overall and every family at difficulties 1 and 3 (2 is not part of the target), intervals by hand."""
    from tapir_exp.report import main as report_main

    root = tmp_path / "outputs" / "skills"
    warm = {1: {("Math", 1): [0] * 80, ("Math", 3): [1, 1], ("Others", 2): [1, 1]},
            2: {("Math", 1): [1, 0], ("Math", 3): [0, 1], ("Others", 2): [1, 1], ("Reasoning", 1): [1] + [0] * 19},
            3: {("Others", 2): [1] * 10}}
    for seed, cells in warm.items():
        write_run(root, "experiment=skills_tapir", seed, {"Math": [1]}, warm={"Math": [0]})
        rows = [{"task": t, "difficulty": d, "instruction": f"{t} d{d} item {i}", "answer": "x", "output": "x",
                 "correct": bool(ok)} for (t, d), oks in cells.items() for i, ok in enumerate(oks)]
        path = root / f"experiment=skills_tapir,seed={seed}" / "round_0" / "eval" / "skills_outputs.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    # a setting's last round is not the warm-up student: it must not enter the table
    write_run(root, "experiment=skills_no_balance", 1, {"Math": [1] * 50})
    out = tmp_path / "report"
    report_main([str(root), "--out", str(out)])
    md = (out / "report.md").read_text().split("against issue 19's target (item 2)")[1]
    # Wilson by hand: 0/80 -> [0, z^2 / (80 + z^2)] = [0, 0.0458]; 1/2 -> 0.5 +- 1.96 * 0.60424 / 2.9208 = 0.405;
    # pooled 1/82 -> centre 0.0340, half 0.0319 -> [0.002, 0.066], which still reaches "> 5 %"
    assert "| Math d1 | > 5 % | 0.000 [0.000, 0.046] ✗ | 0.500 [0.095, 0.905] |  | 0.012 [0.002, 0.066] ✗ |" in md
    # 2/2 misses "< 90 %" but its interval [0.342, 1] reaches it; pooled 3/4 meets it
    assert "| Math d3 | < 90 % | 1.000 [0.342, 1.000] ✗ | 0.500 [0.095, 0.905] |  | 0.750 [0.301, 0.954] |" in md
    # one of 20 is 0.05, which is not above 5 %; its interval [0.009, 0.236] reaches it. Seed 1 has no such cell
    assert "| Reasoning d1 | > 5 % |  | 0.050 [0.009, 0.236] ✗ |  | 0.050 [0.009, 0.236] ✗ |" in md
    # overall: seed 1 4/84 = 0.048 (interval up to 0.116: misses 25-60 % whole), seed 2 5/26, seed 3 10/10 (above
    # 60 %, from 0.722: whole), pooled 19/120 (centre 0.1689, half 0.0652)
    assert ("| overall | 25–60 % | 0.048 [0.019, 0.116] ✗ | 0.192 [0.085, 0.379] ✗ | 1.000 [0.722, 1.000] ✗ | "
            "0.158 [0.104, 0.234] ✗ |") in md
    assert "Others" not in md  # difficulty 2 only
    assert "- per seed: 6 of 8 cells miss the target by their point estimate, 3 by their whole interval." in md
    assert "- pooled: 3 of 4 cells miss the target by their point estimate, 1 by their whole interval." in md


def test_replication_against_another_grid_sets_intervals_and_effects_side_by_side(tmp_path):
    # two grids of the same settings whose results disagree: grid B's no_balance effect has the other sign,
    # no_expand has no effect in either but a different accuracy (intervals apart)
    from tapir_exp.report import main as report_main

    grids = {"a": ([0] * 10, [1] * 10, [0] * 10), "b": ([1] * 10, [0] * 10, [1] * 10)}
    for name, (tapir, no_balance, no_expand) in grids.items():
        root = tmp_path / name / "outputs" / "skills"
        for seed in (1, 2):
            write_run(root, "experiment=skills_tapir", seed, {"Math": tapir})
            write_run(root, "experiment=skills_no_balance", seed, {"Math": no_balance})
            write_run(root, "experiment=skills_no_expand", seed, {"Math": no_expand})
    out = tmp_path / "report"
    report_main([str(tmp_path / "a/outputs/skills"), "--out", str(out), "--against", str(tmp_path / "b/outputs/skills")])
    md = (out / "report.md").read_text().split("## Skills world: replication against", 1)[1]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in md.splitlines() if line.startswith("| skills/")}
    balance, expand, tapir = (rows[f"skills/experiment=skills_{s}"] for s in ("no_balance", "no_expand", "tapir"))
    assert balance[1].startswith("1.000 [") and balance[2].startswith("0.000 [") and balance[3] == "**no**"
    assert balance[4] == "20 of 20" and balance[5].startswith("+1.000") and balance[6].startswith("-1.000")
    assert balance[7].strip(" |") == "opposite signs"
    assert expand[4] == "20 of 20" and expand[7].strip(" |") == "none in either" and tapir[3] == "**no**"
    assert "- 0 of 3 settings' accuracy intervals overlap." in md
    # no_balance's Math and overall cells: effects in both grids, each with the other sign
    assert "- 2 paired-difference cells (settings × task families and overall) show an effect here; 0 of them " \
           "show it with the same sign in the other grid, 2 with the other sign." in md

    report_main([str(tmp_path / "a/outputs/skills"), "--out", str(out), "--against", str(tmp_path / "a/outputs/skills")])
    md = (out / "report.md").read_text().split("## Skills world: replication against", 1)[1]
    assert md.count("| 0 of 20 |") == 3 and "- 3 of 3 settings' accuracy intervals overlap." in md
    assert "| repeated |" in md and "2 of them show it with the same sign in the other grid, 0 with" in md


def test_against_a_grid_without_skills_outcomes_says_so(tmp_path, capsys):
    from tapir_exp.report import main as report_main

    write_run(tmp_path / "a", "experiment=skills_tapir", 1, {"Math": [1, 0]})
    other = tmp_path / "b" / "run"
    other.mkdir(parents=True)
    (other / "summary.json").write_text(json.dumps({"name": "demo", "run_name": "run", "rounds": [{"round": 0}]}))
    report_main([str(tmp_path / "a"), "--out", str(tmp_path / "out"), "--against", str(tmp_path / "b")])
    assert "none to compare here" in capsys.readouterr().err
    assert "replication against" not in (tmp_path / "out" / "report.md").read_text()


def _replication_rows(md: str) -> list[str]:
    return [line for line in md.split("## Skills world: replication against", 1)[1].splitlines()
            if line.startswith(("| skills/", "- "))]


def test_against_a_committed_report_pairs_every_item_as_against_the_grid_itself(tmp_path):
    # Issue 19, item 6: a grid's outputs stay on its machine, its report is committed. tapir-report writes every
    # answer's correctness (skills_outcomes.csv); --against that report directory gives the same comparison,
    # item by item, as --against the grid's own run directories.
    from tapir_exp.report import main as report_main
    from tapir_exp.skills.compare import OUTCOMES_CSV

    grids = {"a": ([0, 1, 1, 0] * 3, [1] * 12), "b": ([1, 1, 0, 0] * 3, [0, 1] * 6)}
    for name, (tapir, no_balance) in grids.items():
        root = tmp_path / name / "outputs" / "skills"
        for seed in (1, 2):
            write_run(root, "experiment=skills_tapir", seed, {"Math": tapir, "Others": no_balance[:4]},
                      warm={"Math": no_balance, "Others": tapir[:4]})
            write_run(root, "experiment=skills_no_balance", seed, {"Math": no_balance, "Others": tapir[:4]})
    committed = tmp_path / "committed"
    report_main([str(tmp_path / "b/outputs/skills"), "--out", str(committed)])
    rows = (committed / OUTCOMES_CSV).read_text().splitlines()
    assert rows[0] == "setting,seed,environments,task,difficulty,items,correct"
    assert len(rows) == 1 + 3 * 2 * 2  # warm-up, tapir, no_balance x 2 seeds x 2 cells
    assert any(r.startswith("skills/experiment=skills_no_balance,1,,Math,1,") and r.endswith(",010101010101")
               for r in rows)  # instruction order: "Math item 0", "Math item 1", "Math item 10", ...

    report_main([str(tmp_path / "a/outputs/skills"), "--out", str(tmp_path / "r1"),
                 "--against", str(tmp_path / "b/outputs/skills")])
    report_main([str(tmp_path / "a/outputs/skills"), "--out", str(tmp_path / "r2"), "--against", str(committed)])
    by_runs = _replication_rows((tmp_path / "r1" / "report.md").read_text())
    by_report = _replication_rows((tmp_path / "r2" / "report.md").read_text())
    assert by_runs == by_report
    # tapir: Math differs at 2 of every 4 items (6 of 12), Others at 2 of 4; per seed 8 of 16
    assert any(r.startswith("| skills/experiment=skills_tapir |") and " | 16 of 32 | " in r for r in by_report)


def test_outcomes_file_round_trips_and_a_bad_row_names_its_line(tmp_path):
    from tapir_exp.errors import DataError
    from tapir_exp.skills.compare import by_position, read_outcomes, write_outcomes

    got = {("Math", 1, "b?"): True, ("Math", 1, "a?"): False, ("Math", 2, "c?"): True, ("Code", 1, "d?"): False}
    path = tmp_path / "skills_outcomes.csv"
    write_outcomes({"s": {"1": got}}, path, {("s", "1"): "e2 e1"})
    read, envs = read_outcomes(path)
    assert read == by_position({"s": {"1": got}}) and envs == {"e1", "e2"}
    assert sorted(read["s"]["1"].values()) == sorted(got.values())

    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + [lines[2].rsplit(",", 1)[0] + ",01x"] + lines[3:]) + "\n")
    with pytest.raises(DataError, match=r"skills_outcomes.csv:line 3: field 'correct': expected a non-empty string"):
        read_outcomes(path)
    path.write_text("setting,seed\ns,1\n")
    with pytest.raises(DataError, match=r"line 1: expected the header setting,seed,environments"):
        read_outcomes(path)


def test_malformed_outputs_and_summaries_get_a_one_line_error_with_their_line(tmp_path):
    from tapir_exp.errors import DataError
    from tapir_exp.report import load
    from tapir_exp.skills.compare import outcomes

    write_run(tmp_path, "experiment=skills_tapir", 1, {"Math": [1, 0]})
    run = tmp_path / "experiment=skills_tapir,seed=1"
    out = run / "round_1" / "eval" / "skills_outputs.jsonl"
    out.write_text(out.read_text() + '{"task": "Math"}\n')
    with pytest.raises(DataError, match=r"skills_outputs.jsonl:line 3: expected a JSON object with task"):
        outcomes(run, 1)
    (run / "summary.json").write_text('{"rounds": [}')
    with pytest.raises(DataError, match=r"summary.json:line 1: malformed JSON"):
        load(run)


def test_each_row_names_the_environments_of_the_rounds_its_answers_depend_on(tmp_path):
    # the warm-up row is round 0 of the TAPIR runs: only round 0's environment; a setting's row is its last round,
    # trained through every round before it
    from tapir_exp.report import find_runs, load
    from tapir_exp.skills.compare import environments_by_setting, outcomes_by_setting

    root = tmp_path / "skills"
    write_run(root, "experiment=skills_tapir", 1, {"Math": [1]}, warm={"Math": [0]})
    write_run(root, "experiment=skills_no_balance", 1, {"Math": [0]})
    for run, envs in (("experiment=skills_tapir,seed=1", ["e0", "e1"]), ("experiment=skills_no_balance,seed=1", ["e2", "e2"])):
        summary = json.loads((root / run / "summary.json").read_text())
        for rec, env in zip(summary["rounds"], envs, strict=True):
            rec["environment"] = env
        (root / run / "summary.json").write_text(json.dumps(summary))
    runs = [load(r) for r in find_runs([str(root)])]
    envs = environments_by_setting(runs)
    assert envs == {(WARMUP, "1"): "e0", ("skills/experiment=skills_tapir", "1"): "e0 e1",
                    ("skills/experiment=skills_no_balance", "1"): "e2"}
    assert set(envs) == {(s, seed) for s, by_seed in outcomes_by_setting(runs).items() for seed in by_seed}
