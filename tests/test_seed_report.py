"""Seed-aware comparison on a real multirun of two settings x two seeds (the skills world, shrunk): the
report's table has one row per setting with the mean over seeds and its 95 % interval, the plots have error
bars, and the W&B runs of the multirun share a group with the setting as job_type."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
from scipy.stats import t as student_t

from tapir_exp.report import main as report_main
from tests.support_pipeline import SMALL_SKILLS_BASE, run_tapir
from tests.support_wandb import run_info, wait_for

pytestmark = pytest.mark.slow


GRID = ["--multirun", "experiment=skills_tapir", "logger=wandb_offline", "oracle.progress=false",
        "curriculum.rounds=1", "curriculum.size=16", "data.generator.n=40", "steps.warmup.size=16",
        "steps.warmup.epochs=1", "trainer.max_epochs=1", "steps.expand.per_round=4", "eval.skills.per_cell=1",
        "generation.max_new_tokens=4", "steps.refine.enabled=true,false", "seed=1,2", *SMALL_SKILLS_BASE]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """The root of a finished multirun: two settings x two seeds."""
    root = tmp_path_factory.mktemp("grid")
    proc = run_tapir(GRID, root, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def steps_of(run: Path) -> dict[str, tuple[str, float]]:
    """``round/step`` -> (signature, when committed): a recomputed step changes both or the time."""
    return {f"{e['round']}/{e['step']}": (e["signature"], e["finished_at"])
            for e in json.loads((run / "manifest.json").read_text())["steps"]}


def test_two_settings_two_seeds_report_and_wandb_groups(grid):
    tmp_path = grid
    runs = sorted(p.parent for p in (tmp_path / "outputs/skills").glob("*/summary.json"))
    assert len(runs) == 4
    summaries = {r: json.loads((r / "summary.json").read_text()) for r in runs}
    # steps.warmup.share (on in the skills experiments): the two settings of a seed start from one warm-up,
    # trained by the first of them and linked (same file) into the other
    for seed in (1, 2):
        mine = [r for r in runs if summaries[r]["config"]["seed"] == seed]
        counts = [next(e["counts"] for e in json.loads((r / "manifest.json").read_text())["steps"]
                       if e["round"] == 0 and e["step"] == "student") for r in mine]
        assert sorted("shared_from" in c for c in counts) == [False, True], counts
        assert len({(r / "round_0/student/model.safetensors").stat().st_ino for r in mine}) == 1
        # share_generations (on in the skills experiments): the run that linked the warm-up read that student's
        # answers to the eval set (round 0, 18 items) and to the pool (round 1) from the first run's calls
        first, second = (mine[i] for i in sorted(range(2), key=lambda i: "shared_from" in counts[i]))
        hits = [line for line in (second / "tapir.log").read_text().splitlines() if "identical call" in line]
        assert "student generation: 18 answers of an earlier run's identical call" in hits[0] and len(hits) >= 2
        assert "identical call" not in (first / "tapir.log").read_text()
        evals = [(r / "round_0/eval/skills_outputs.jsonl").read_bytes() for r in (first, second)]
        assert evals[0] == evals[1]

    out = tmp_path / "report"
    report_main([str(tmp_path / "outputs/skills"), "--out", str(out)])
    with open(out / "report.csv") as fh:
        rows = {row["setting"].lower(): row for row in csv.DictReader(fh)}  # Hydra writes True/False
    assert set(rows) == {"skills/steps.refine.enabled=true", "skills/steps.refine.enabled=false"}
    for setting, row in rows.items():
        flag = setting.rsplit("=", 1)[1]
        mine = [s for s in summaries.values() if s["config"]["steps"]["refine"]["enabled"] == (flag == "true")]
        assert row["seeds"] == "2" and sorted(s["config"]["seed"] for s in mine) == [1, 2]
        for key, field in (("train/final_loss", ("train", "final_loss")), ("oracle/requests", ("oracle", "requests"))):
            values = [s["rounds"][-1][field[0]][field[1]] for s in mine]
            assert float(row[key]) == pytest.approx(statistics.fmean(values))
            half = student_t.ppf(0.975, 1) * statistics.stdev(values) / 2 ** 0.5
            assert float(row[f"{key} ci95"]) == pytest.approx(half)
    md = (out / "report.md").read_text()
    # every round names the environment it was computed in, and the report lists it (one machine: one row)
    from tapir_exp.environment import cpu_model

    ids = {rec["environment"] for s in summaries.values() for rec in s["rounds"]}
    assert len(ids) == 1
    env = next(iter(summaries.values()))["environments"][ids.pop()]
    assert env["cpu"] == cpu_model() and env["torch"].startswith("2.13") and env["torch_threads"] >= 1
    assert "## Environments" in md and f"| 4 | {env['cpu']} |" in md and env["packages_hash"] in md
    assert "| skills/steps.refine.enabled=true | 2 | 1 |" in md.lower() and " ± " in md
    # and the one pre-trained base all four runs started from (the grid's shrunk base, built once)
    import hashlib

    shas = {hashlib.sha256((r / "round_0/student_init/model.safetensors").read_bytes()).hexdigest()[:12] for r in runs}
    assert len(shas) == 1 and f"| {shas.pop()} | 4 | skills-base-" in md.split("## Bases", 1)[1]
    with open(out / "runs.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4  # every run on its own too
    assert (out / "train_final_loss.png").stat().st_size > 10_000

    infos = {r: wait_for(lambda r=r: run_info(r), bool)[0] for r in runs}
    assert len({i["group"] for i in infos.values()}) == 1 and len({i["id"] for i in infos.values()}) == 4
    by_setting: dict[bool, set[str]] = {}
    for r, info in infos.items():
        s = summaries[r]["config"]
        by_setting.setdefault(s["steps"]["refine"]["enabled"], set()).add(info["job_type"])
        assert f"seed={s['seed']}" in info["tags"]
    # seeds of one setting share a job_type, the two settings have different ones
    assert all(len(v) == 1 for v in by_setting.values()) and len(set.union(*by_setting.values())) == 2
    assert Path(out / "report.md").read_text().count("\n| skills/") >= 2


def test_a_grid_moved_to_another_directory_recomputes_nothing(grid, tmp_path):
    """Copied elsewhere (another mount, another cluster), the grid runs again without recomputing a step or
    training a warm-up: no signature holds the root's path (the base student's cache directory and the
    packaged files are not part of any)."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(grid / "outputs", moved / "outputs", symlinks=True)
    runs = sorted(p.parent for p in (moved / "outputs/skills").glob("*/summary.json"))
    assert len(runs) == 4
    before = {r: steps_of(r) for r in runs}
    proc = run_tapir(GRID, moved, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {r: steps_of(r) for r in runs} == before
    assert sorted(p.parent for p in (moved / "outputs/skills").glob("*/summary.json")) == runs  # no new run


def test_a_grid_against_itself_repeats_every_answer_in_one_environment(grid, tmp_path):
    # tapir-report --against (issue 19, item 6): the same grid twice is one environment, every answer equal
    report_main([str(grid / "outputs/skills"), "--out", str(tmp_path), "--against", str(grid / "outputs/skills")])
    md = (tmp_path / "report.md").read_text().split("## Skills world: replication against", 1)[1]
    rows = [line for line in md.splitlines() if line.startswith("| skills/")]
    assert len(rows) == 2 and all(" | yes | 0 of 36 | " in row for row in rows), rows
    assert "both grids have runs of one environment" in md
    # and against its committed report (skills_outcomes.csv, what stays of a grid run on another machine):
    # the same items paired, the same environment named
    report_main([str(grid / "outputs/skills"), "--out", str(tmp_path / "again"), "--against", str(tmp_path)])
    again = (tmp_path / "again" / "report.md").read_text().split("## Skills world: replication against", 1)[1]
    assert [line for line in again.splitlines() if line.startswith("| skills/")] == rows
    assert "both grids have runs of one environment" in again
