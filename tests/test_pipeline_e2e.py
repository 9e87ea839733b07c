"""The TAPIR pipeline end to end, as a user runs it: `tapir` in a subprocess against an OpenAI-compatible
oracle over real HTTP (tests/support_pipeline.py answers like a predictable strong model), a tiny student
trained with Lightning, every step's artifact written through the run store.

Covers: artifacts of each step, resume after completion (no new oracle request), resume after real kills at
different moments (same final datasets, no request paid twice beyond those in flight at the kill), the
ablation overrides, and plan mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tapir_exp.records import read_jsonl
from tapir_exp.testing.openai_server import FakeOpenAIServer
from tests.support_pipeline import TAPIR, fast_overrides, responder, run_tapir, tapir_env

pytestmark = pytest.mark.slow


def run_dir_of(root: Path) -> Path:
    dirs = [p.parent for p in (root / "outputs").glob("*/*/manifest.json")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def datasets(run_dir: Path) -> dict[str, list[dict]]:
    return {p.parent.name: read_jsonl(p) for p in sorted(run_dir.glob("round_*/dataset.jsonl"))}


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(responder=responder) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference_run(server, tmp_path_factory):
    """One uninterrupted run; later tests compare against it."""
    root = tmp_path_factory.mktemp("reference")
    before = server.request_count
    proc = run_tapir(fast_overrides(server.base_url), root, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"root": root, "run_dir": run_dir_of(root), "requests": server.request_count - before, "proc": proc}


def test_every_step_leaves_its_artifact(reference_run):
    run_dir = reference_run["run_dir"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    steps = {(e["round"], e["step"]) for e in manifest["steps"]}
    for step in ("teacher", "classify", "init", "warmup_data", "student", "eval"):
        assert (0, step) in steps
    for r in (1, 2):
        for step in ("student_answers", "mfd", "expand", "mix", "dataset", "student", "eval"):
            assert (r, step) in steps, (r, step)

    teacher = read_jsonl(run_dir / "round_0" / "teacher.jsonl")
    assert len(teacher) == 24 and all(ex["output"].startswith("Here is a careful answer") for ex in teacher)
    labelled = read_jsonl(run_dir / "round_0" / "classify.jsonl")
    assert {ex["task"] for ex in labelled} <= set(__import__("yaml").safe_load(
        (Path(__file__).resolve().parents[1] / "conf/tasks/tapir.yaml").read_text())["labels"])
    # "not-a-label" answers of the classifier fall back to Others and are marked invalid
    assert any(ex["meta"]["task_source"] == "oracle-invalid" and ex["task"] == "Others" for ex in labelled)

    mfd = read_jsonl(run_dir / "round_1" / "mfd.jsonl")
    for ex in mfd:
        j = ex["meta"]["judge"]
        assert set(j["orders"]) == {"ts", "st"}
        assert ex["meta"]["mfd"] == pytest.approx(j["teacher"] - j["student"])
        assert ex["meta"]["hard"] == (ex["meta"]["mfd"] > 1.0)
    # the tiny student writes short answers; the teacher's are long: it is hard on most items
    assert sum(ex["meta"]["hard"] for ex in mfd) > len(mfd) / 2

    expanded = read_jsonl(run_dir / "round_1" / "expand.jsonl")
    assert expanded and all(ex["source"] == "expanded" and ex["output"] for ex in expanded)
    hard_tasks = {ex["task"] for ex in mfd if ex["meta"]["hard"]}
    assert {ex["task"] for ex in expanded} <= hard_tasks

    data = read_jsonl(run_dir / "round_1" / "dataset.jsonl")
    assert len(data) == 16
    for ex in data:
        if ex["task"] in ("Math", "Reasoning") and ex["meta"].get("refined"):
            assert "Answer:" in ex["output"] and ex["meta"]["original_output"] != ex["output"]
    # the final student is a plain HF directory
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = run_dir / "final_student"
    AutoModelForCausalLM.from_pretrained(final)
    assert AutoTokenizer.from_pretrained(final).chat_template

    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert "round 2" in reference_run["proc"].stdout


def test_rerun_after_completion_sends_nothing_and_changes_nothing(server, reference_run):
    run_dir = reference_run["run_dir"]
    before = server.request_count
    want = datasets(run_dir)
    proc = run_tapir(fast_overrides(server.base_url), reference_run["root"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert server.request_count == before
    assert datasets(run_dir) == want


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("kill condition never reached")


@pytest.mark.parametrize("moment", ["oracle_calls", "training", "late_round"])
def test_killed_run_resumes_to_the_same_datasets_without_paying_twice(server, reference_run, tmp_path, moment):
    root = tmp_path
    args = fast_overrides(server.base_url)
    # New run dir and an empty cache, same oracle: the only saving can come from our own store and cache.
    start = server.request_count

    def manifest_steps() -> set:
        files = list((root / "outputs").glob("*/*/manifest.json"))
        if not files:
            return set()
        try:
            return {(e["round"], e["step"]) for e in json.loads(files[0].read_text())["steps"]}
        except (json.JSONDecodeError, OSError):
            return set()

    conditions = {
        # during the first judge batch of round 1
        "oracle_calls": lambda: (1, "student_answers") in manifest_steps() and server.request_count - start > 60,
        # during warm-up training (the init dir exists, the round-0 student does not)
        "training": lambda: (0, "warmup_data") in manifest_steps() and any((root / "outputs").glob("*/*/round_0/train_work/*")),
        "late_round": lambda: (2, "mix") in manifest_steps(),
    }
    proc = subprocess.Popen(TAPIR + args, cwd=root, env=tapir_env(root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when(proc, conditions[moment])
    in_flight_bound = 8  # oracle.limits.concurrency in fast_overrides
    done = run_tapir(args, root, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert datasets(run_dir_of(root)) == datasets(reference_run["run_dir"])
    paid = server.request_count - start
    # Each request is paid once; only those in flight at the kill may have been sent again.
    assert reference_run["requests"] <= paid <= reference_run["requests"] + in_flight_bound


@pytest.mark.parametrize("override,check", [
    ("curriculum=single_round", lambda s: len(s["rounds"]) == 2),
    ("steps.balance.enabled=false", lambda s: s["rounds"][1]["round_size"] == 16),
    ("steps.refine.enabled=false", lambda s: all(r.get("refined", 0) == 0 for r in s["rounds"][1:])),
    ("steps.expand.enabled=false", lambda s: all(r.get("expanded", 0) == 0 for r in s["rounds"][1:])),
    ("steps.mfd.selection=random", lambda s: s["rounds"][1]["hard_count"] > 0),
])
def test_ablations_are_single_overrides(server, tmp_path, override, check):
    base = fast_overrides(server.base_url)
    if override.startswith("curriculum="):  # the fast preset pins curriculum keys the option itself sets
        base = [o for o in base if not o.startswith("curriculum.rounds")]
    proc = run_tapir(base + [override, "eval.alpaca_eval.enabled=false",
                                                         "eval.mt_bench.enabled=false"], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir_of(tmp_path) / "summary.json").read_text())
    assert check(summary), summary["rounds"]


def test_random_selection_has_the_size_of_mfd_selection(server, reference_run, tmp_path):
    proc = run_tapir(fast_overrides(server.base_url) + ["steps.mfd.selection=random"], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = json.loads((reference_run["run_dir"] / "summary.json").read_text())["rounds"][1]
    got = json.loads((run_dir_of(tmp_path) / "summary.json").read_text())["rounds"][1]
    assert got["hard_count"] == ref["hard_count"]


def test_plan_mode_calls_no_model(server, tmp_path):
    before = server.request_count
    proc = run_tapir(fast_overrides(server.base_url) + ["mode=plan", "+oracle.prices.fake-model={prompt: 10, completion: 30}"],
                     tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert server.request_count == before
    plan = json.loads(next((tmp_path / "outputs").glob("*/*/plan.json")).read_text())
    by_role = plan["by_role"]
    # 24 teacher answers + 4 expanded per round x 2 rounds
    assert by_role["teacher"]["requests"] == 24 + 8
    assert by_role["classifier"]["requests"] == 24
    # judge: round 1 24 items, round 2 28 items; 2 orders x 2 answers each
    assert by_role["judge"]["requests"] == (24 + 28) * 4
    assert plan["total"]["cost_usd"] > 0
    assert "oracle plan" in proc.stdout


@pytest.mark.slow
def test_submitit_job_killed_and_resubmitted_resumes(server, reference_run, tmp_path):
    """The SLURM code path on CPU: a multirun job through hydra's submitit launcher (submitit_local), killed
    mid-run (SIGKILL of the whole job), then the same command resubmitted: it resumes from the run store,
    ends with the same datasets and pays no oracle request twice beyond those in flight."""
    args = ["--multirun", "hydra/launcher=local", "hydra.launcher.timeout_min=30",
            *fast_overrides(server.base_url)]
    start = server.request_count
    proc = subprocess.Popen(TAPIR + args, cwd=tmp_path, env=tapir_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def judged_round_1() -> bool:
        return any('"step": "mfd"' in m.read_text(errors="ignore")
                   for m in (tmp_path / "outputs").glob("*/*/manifest.json"))

    deadline = time.time() + 600
    while not judged_round_1() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its submitit job process
    proc.wait()
    done = run_tapir(args, tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next(p.parent for p in (tmp_path / "outputs").glob("*/*/summary.json"))
    assert datasets(run_dir) == datasets(reference_run["run_dir"])
    paid = server.request_count - start
    assert reference_run["requests"] <= paid <= reference_run["requests"] + 8
