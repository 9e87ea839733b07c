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
from collections import Counter
from pathlib import Path

import pytest

from tapir_exp.records import Example, read_jsonl
from tapir_exp.steps import expand
from tapir_exp.testing.openai_server import FakeOpenAIServer
from tests.support_pipeline import REPO, TAPIR, fast_overrides, responder, run_tapir, tapir_env

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
    assert len(teacher) == 24 and all(ex["output"].startswith(("Here is a careful answer", "Brief reply.")) for ex in teacher)
    labelled = read_jsonl(run_dir / "round_0" / "classify.jsonl")
    assert {ex["task"] for ex in labelled} <= set(__import__("yaml").safe_load(
        (Path(__file__).resolve().parents[1] / "conf/tasks/tapir.yaml").read_text())["labels"])
    # "not-a-label" answers of the classifier fall back to Others and are marked invalid
    assert any(ex["meta"]["task_source"] == "oracle-invalid" and ex["task"] == "Others" for ex in labelled)

    mfd = read_jsonl(run_dir / "round_1" / "mfd.jsonl")
    for ex in mfd:
        j = ex["meta"]["judge"]
        assert set(j["orders"]) == {"ts", "st"}
        # oracle=openai judges as Lion does: one pair request per order, scores by log-probabilities, hard at >= 1
        assert {o["method"] for o in j["orders"].values()} == {"logprob"}
        assert ex["meta"]["mfd"] == pytest.approx(j["teacher"] - j["student"])
        assert ex["meta"]["hard"] == (ex["meta"]["mfd"] >= 1.0)
    # the tiny student writes short answers; the teacher's are mostly long: it is hard on most items, not all
    assert len(mfd) / 2 < sum(ex["meta"]["hard"] for ex in mfd) < len(mfd)

    expanded = read_jsonl(run_dir / "round_1" / "expand.jsonl")
    assert expanded and all(ex["source"] == "expanded" and ex["output"] for ex in expanded)
    hard_tasks = {ex["task"] for ex in mfd if ex["meta"]["hard"]}
    assert {ex["task"] for ex in expanded} <= hard_tasks

    data = read_jsonl(run_dir / "round_1" / "dataset.jsonl")
    assert len(data) == 16
    styles = {"Math": "stepwise", "Reasoning": "stepwise", "Code Generation": "code", "Code Debug": "code"}
    styled = [ex for ex in data if ex["task"] in styles]
    assert styled, "the round has no item of a task with a refinement style"
    for ex in data:  # every item of a styled task is rewritten in its style; no other item is touched
        if ex["task"] in styles:
            assert ex["meta"]["refined"] == styles[ex["task"]] and ex["meta"]["original_output"] != ex["output"]
            assert ("Answer:" if styles[ex["task"]] == "stepwise" else "```") in ex["output"]
        else:
            assert "refined" not in ex["meta"]
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


def test_console_shows_no_known_library_noise_and_the_run_log_keeps_it(reference_run):
    """Each training round used to print Lightning's LitLogger tip and LeafSpec warning, "Found N module(s) in
    eval mode", DeepSpeed's accelerator guess and the model loading bars (tapir_exp/console.py says why each is
    noise). The console shows none of them; tapir.log keeps the library messages (the eval-mode warning is
    fixed at its source: the student trains in train mode)."""
    proc = reference_run["proc"]
    console = proc.stdout + proc.stderr
    log = (reference_run["run_dir"] / "tapir.log").read_text()
    assert "round 2" in proc.stdout  # the round tables are there
    for text in ("Tip: For seamless cloud logging", "LeafSpec", "Setting accelerator to CPU",
                 "module(s) in eval mode", "Loading weights", "Writing model shards"):
        assert text not in console, text
    assert "Tip: For seamless cloud logging" in log and "Setting accelerator to CPU" in log
    assert "module(s) in eval mode" not in log
    assert "`Trainer.fit` stopped" in log and "`Trainer.fit` stopped" in proc.stdout  # the rest of Lightning's lines
    assert "INFO: " not in proc.stderr  # ... once, by the run's console handler (not again by Lightning's own)


def manifest_entries(run_dir: Path) -> dict[str, float]:
    """``round/step`` -> when the store committed it: a recomputed step gets a new time."""
    return {f"{e['round']}/{e['step']}": e["finished_at"]
            for e in json.loads((run_dir / "manifest.json").read_text())["steps"]}


# The CLI in a subprocess that reports, at exit, which heavy libraries it imported (the interpreter's own
# module table: a model cannot be loaded, a trainer or a W&B run started, without importing them).
HEAVY = ("torch", "transformers", "lightning", "wandb", "deepspeed")
REPORTING_CLI = ("import atexit, json, runpy, sys\n"
                 f"atexit.register(lambda: print('IMPORTED=' + json.dumps([m for m in {HEAVY!r} if m in sys.modules])))\n"
                 "sys.argv[0] = 'tapir'\n"
                 "runpy.run_module('tapir_exp.cli', run_name='__main__')\n")


def test_rerun_of_a_finished_run_loads_nothing_and_recomputes_nothing(server, reference_run):
    """Even with W&B as the logger: every round was logged, so no W&B run starts; every step (eval included)
    comes from the store, so no model, trainer or oracle is built."""
    run_dir = reference_run["run_dir"]
    before = manifest_entries(run_dir)
    recorded = round_records(run_dir)
    proc = subprocess.run([TAPIR[0], "-c", REPORTING_CLI, *fast_overrides(server.base_url), "logger=wandb"],
                          cwd=reference_run["root"], env=tapir_env(reference_run["root"]), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = json.loads(proc.stdout.split("IMPORTED=")[-1].splitlines()[0])
    assert imported == [], imported
    assert manifest_entries(run_dir) == before
    assert {k for k in before if k.endswith("/eval")} == {"0/eval", "1/eval", "2/eval"}
    assert not (run_dir / "wandb").exists()
    assert "round 2" in proc.stdout  # the round tables are shown again, from the summary
    # the summary keeps what the computing process recorded: not the re-run's second and empty oracle usage
    assert round_records(run_dir) == recorded
    assert all(rec["wall_seconds"] > 0 and rec["oracle"]["requests"] > 0 for rec in recorded.values()), recorded


def round_records(run_dir: Path) -> dict[int, dict]:
    """Each round's wall time and oracle usage as summary.json holds them."""
    rounds = json.loads((run_dir / "summary.json").read_text())["rounds"]
    return {r["round"]: {"wall_seconds": r.get("wall_seconds"), "oracle": r.get("oracle")} for r in rounds}


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run finished (exit {proc.returncode}) before the kill condition was reached")
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
    committed = manifest_entries(run_dir_of(root))
    in_flight_bound = 8  # oracle.limits.concurrency in fast_overrides
    done = run_tapir(args, root, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # what the killed attempt committed (in the last round: earlier rounds' eval among it) is not computed again
    after = manifest_entries(run_dir_of(root))
    assert {k: after[k] for k in committed} == committed
    if moment == "late_round":
        assert {"0/eval", "1/eval"} <= committed.keys()
    assert datasets(run_dir_of(root)) == datasets(reference_run["run_dir"])
    paid = server.request_count - start
    # Each request is paid once; only those in flight at the kill may have been sent again.
    assert reference_run["requests"] <= paid <= reference_run["requests"] + in_flight_bound


# ---------------------------------------------------------------------------- ablations
# Each ablation runs the reference command (same seed) plus its one override; the tests compare the two runs'
# artifacts for the difference the ablation is meant to make and nothing else.


@pytest.fixture(scope="module")
def ablation(server, tmp_path_factory):
    runs: dict[str, Path] = {}

    def run(override: str) -> Path:
        if override not in runs:
            root = tmp_path_factory.mktemp("ablation")
            extra = ["--config-dir", str(REPO / "sweeps")] if override.startswith("+ablation=") else []
            proc = run_tapir(extra + fast_overrides(server.base_url) + [override], root, timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[override] = run_dir_of(root)
        return runs[override]

    return run


def jsonl(run_dir: Path, r: int, step: str) -> list[dict]:
    path = run_dir / f"round_{r}" / f"{step}.jsonl"
    return read_jsonl(path) if path.exists() else []


def hard_ids(run_dir: Path, r: int) -> list[str]:
    return json.loads((run_dir / f"round_{r}" / "select.json").read_text())["hard"]


def expand_counts(run_dir: Path, r: int) -> dict:
    entries = json.loads((run_dir / "manifest.json").read_text())["steps"]
    return next(e["counts"] for e in entries if e["step"] == "expand" and e["round"] == r)


def part_counts(mix: list[dict], part: str) -> Counter:
    return Counter(ex["task"] for ex in mix if ex["meta"]["mix_part"] == part)


def proportional(source: Counter, drawn: Counter) -> bool:
    """Whether a draw has the source's task distribution within rounding (each label off by less than 1)."""
    n, total = sum(drawn.values()), sum(source.values())
    return set(drawn) <= set(source) and all(abs(drawn.get(t, 0) - n * c / total) < 1 for t, c in source.items())


def _parts_keep_their_own_distribution(run_dir: Path, r: int) -> bool:
    mix, judged = jsonl(run_dir, r, "mix"), jsonl(run_dir, r, "mfd")
    ids = set(hard_ids(run_dir, r))
    hard_src = Counter(ex["task"] for ex in judged if ex["id"] in ids) + Counter(ex["task"] for ex in jsonl(run_dir, r, "expand"))
    easy_src = Counter(ex["task"] for ex in judged if ex["id"] not in ids)
    ok = True
    for part, src in (("hard", hard_src), ("easy", easy_src)):
        ok &= proportional(src, part_counts(mix, part))
    return ok


@pytest.mark.parametrize("override", ["+ablation=no_balance", "+ablation=no_task_awareness"])
def test_no_balance_keeps_natural_task_distributions_everywhere(ablation, reference_run, override):
    ref, run = reference_run["run_dir"], ablation(override)
    assert hard_ids(run, 1) == hard_ids(ref, 1)  # same seed, same student, same judge: the same hard set
    # each part of the mix is a proportional draw from what it is drawn from; with balancing it is not
    assert _parts_keep_their_own_distribution(run, 1)
    assert not _parts_keep_their_own_distribution(ref, 1)
    # expansion counts follow the hard set's own task distribution, not tasks.ratios
    judged = {ex["id"]: ex for ex in jsonl(run, 1, "mfd")}
    hard = [Example.from_dict(judged[i]) for i in hard_ids(run, 1)]
    ratios = json.loads((ref / "summary.json").read_text())["config"]["tasks"]["ratios"]
    natural, balanced = expand.plan_counts(hard, None, 4), expand.plan_counts(hard, ratios, 4)
    assert natural != balanced  # the test can tell the two apart on this data
    assert expand_counts(run, 1)["wanted_by_task"] == natural
    assert expand_counts(ref, 1)["wanted_by_task"] == balanced


@pytest.mark.parametrize("override", ["+ablation=no_refine", "+ablation=no_task_awareness"])
def test_no_refine_trains_on_unrefined_answers(ablation, reference_run, override):
    ref, run = reference_run["run_dir"], ablation(override)
    assert any(ex["meta"].get("refined") for ex in jsonl(ref, 1, "dataset"))
    for r in (1, 2):
        data = jsonl(run, r, "dataset")
        assert data and not any("refined" in ex["meta"] or "refine_failed" in ex["meta"] for ex in data)
    if override == "+ablation=no_refine":  # nothing else changed: round 1 trains on the reference's mix as it is
        assert jsonl(run, 1, "mix") == jsonl(ref, 1, "mix")
        assert [ex["output"] for ex in jsonl(run, 1, "dataset")] == [ex["output"] for ex in jsonl(ref, 1, "mix")]


def test_no_expand_adds_no_instruction(ablation, reference_run):
    ref, run = reference_run["run_dir"], ablation("+ablation=no_expand")
    assert any(ex["source"] == "expanded" for ex in jsonl(ref, 1, "mix"))
    assert not list(run.glob("round_*/expand.jsonl"))
    for r in (1, 2):
        assert jsonl(run, r, "dataset") and not any(ex["source"] == "expanded" for ex in jsonl(run, r, "dataset"))
    assert hard_ids(run, 1) == hard_ids(ref, 1)


def test_random_selection_differs_from_mfd_selection_with_the_same_size(ablation, reference_run):
    ref, run = reference_run["run_dir"], ablation("+ablation=random_selection")
    chosen, by_mfd = hard_ids(run, 1), hard_ids(ref, 1)
    assert len(chosen) == len(by_mfd) > 0
    assert set(chosen) != set(by_mfd)
    judged = jsonl(run, 1, "mfd")
    assert set(by_mfd) == {ex["id"] for ex in judged if ex["meta"]["hard"]}  # the judge still ran, as in the reference


def test_no_curriculum_is_one_round_with_the_full_runs_budget(ablation, reference_run):
    ref, run = reference_run["run_dir"], ablation("+ablation=no_curriculum")
    trained = {name: len(rows) for name, rows in datasets(run).items()}
    reference = {name: len(rows) for name, rows in datasets(ref).items()}
    assert list(trained) == ["round_1"] and len(reference) == 2
    assert sum(trained.values()) == sum(reference.values())
    summary = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    mix = jsonl(run, 1, "mix")  # hard and easy items alike, no hard fraction
    assert {ex["meta"]["mix_part"] for ex in mix} == {"hard", "easy"} and summary["rounds"][1]["alpha"] is None


def test_verified_expansion_keeps_only_new_instructions_the_student_finds_hard(ablation, reference_run):
    ref, run = reference_run["run_dir"], ablation("steps.expand.verify=true")
    checked = jsonl(run, 1, "expand_mfd")
    assert checked and all(ex["meta"]["mfd"] is not None and "student" in ex["meta"] for ex in checked)
    verdict = {ex["id"]: ex["meta"]["hard"] for ex in checked}
    assert 0 < sum(verdict.values()) < len(verdict)  # some new instructions are hard for the student, some not
    summary = json.loads((run / "summary.json").read_text())["rounds"][1]
    assert summary["expanded_hard_fraction"] == pytest.approx(sum(verdict.values()) / len(verdict))
    for ex in jsonl(run, 1, "mix"):
        if ex["source"] == "expanded":  # verified hard -> hard part; judged easy -> easy part
            assert ex["meta"]["mix_part"] == ("hard" if verdict[ex["meta"].get("repeat_of", ex["id"])] else "easy")
    # unverified (the default), every new instruction is hard and no fraction is measured
    assert all(ex["meta"]["mix_part"] == "hard" for ex in jsonl(ref, 1, "mix") if ex["source"] == "expanded")
    assert json.loads((ref / "summary.json").read_text())["rounds"][1]["expanded_hard_fraction"] is None


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
    # judge: round 1 24 items, round 2 28 items; 2 orders, one pair request each (oracle=openai judges as Lion)
    assert by_role["judge"]["requests"] == (24 + 28) * 2
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
