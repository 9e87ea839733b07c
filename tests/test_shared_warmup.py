"""The warm-up student shared by runs that would train it identically (``steps.warmup.share``): trained once,
linked into every later run with the same signature, keyed also by what decides the floats (torch threads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tapir_exp.student.shared import shared_key, shared_training


def test_second_run_links_the_stored_student_instead_of_training(tmp_path):
    trained: list[Path] = []

    def fit(out: Path) -> dict:
        trained.append(out)
        (out / "model.safetensors").write_bytes(b"weights of run %d" % len(trained))
        return {"steps": 3, "losses": [2.0, 1.5, 1.0]}

    sig = {"config": {"seed": 1, "epochs": 20}, "inputs": {"init": "abc", "data": "def"}}
    cache = tmp_path / "students"
    first, second = tmp_path / "run1", tmp_path / "run2"
    first.mkdir(), second.mkdir()
    counts1 = shared_training(cache, "round0", sig, fit)(first)
    counts2 = shared_training(cache, "round0", sig, fit)(second)
    assert trained == [first]  # the second run did not train
    assert counts1["losses"] == counts2["losses"] == [2.0, 1.5, 1.0] and counts1["steps"] == counts2["steps"] == 3
    assert counts2["shared_from"] == counts1["shared_to"] == f"round0-{shared_key(sig)}"
    a, b = first / "model.safetensors", second / "model.safetensors"
    assert b.read_bytes() == b"weights of run 1" and a.stat().st_ino == b.stat().st_ino  # hard link, no copy
    stored = json.loads((cache / counts1["shared_to"] / "counts.json").read_text())
    assert stored == {"steps": 3, "losses": [2.0, 1.5, 1.0]}

    # another signature (another seed) trains its own
    third = tmp_path / "run3"
    third.mkdir()
    counts3 = shared_training(cache, "round0", {**sig, "config": {"seed": 2, "epochs": 20}}, fit)(third)
    assert trained == [first, third] and "shared_to" in counts3


def test_the_key_holds_the_thread_count_that_decides_the_floats():
    sig = {"config": {"seed": 1}, "inputs": {}}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = shared_key(sig)
        torch.set_num_threads(2)
        assert shared_key(sig) != one
        torch.set_num_threads(1)
        assert shared_key(sig) == one
    finally:
        torch.set_num_threads(threads)


def test_a_plan_never_stores_its_placeholder_student_in_the_shared_cache(tmp_path):
    from tests.support_pipeline import run_tapir

    proc = run_tapir(["experiment=skills_tapir", "mode=plan", "logger=none", "oracle.progress=false",
                      "data.generator.n=40", "curriculum.size=16", "steps.expand.per_round=4"], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plan" in proc.stdout.lower()
    assert not (tmp_path / "outputs/.cache/students").exists()  # the dry run "trained" a warm-up with share on
    # ... and "generated" with share_generations on: its placeholder answers must not be read by a real run
    assert not (tmp_path / "outputs/.cache/generations").exists()


def _composed(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import tapir_exp.config  # noqa: F401 - registers the tapir_* resolvers

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("tapir", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_the_warm_up_signature_holds_its_own_epochs_not_the_rounds():
    """A warm-up with its own number of passes (steps.warmup.epochs) is the same training whatever the rounds'
    trainer.max_epochs, so changing the rounds' epochs must not retrain (nor miss the shared) warm-up."""
    from tapir_exp.pipeline import training_signature

    def warm_up(*extra: str) -> dict:
        cfg = _composed(["experiment=skills_tapir", *extra])
        return training_signature(cfg, cfg.steps.warmup.epochs, 1)

    def a_round(*extra: str) -> dict:
        return training_signature(_composed(["experiment=skills_tapir", *extra]), None, 2)

    assert warm_up()["epochs"] == 12 and a_round()["epochs"] == 3
    assert warm_up("trainer.max_epochs=5") == warm_up()
    assert warm_up("steps.warmup.epochs=7") != warm_up()
    assert warm_up("trainer.lr=1e-3") != warm_up()
    # the rounds train trainer.max_epochs passes, or the student's own when it sets one
    assert a_round("trainer.max_epochs=5")["epochs"] == 5 and a_round("trainer.max_epochs=5") != a_round()
    assert a_round("+student.max_epochs=4")["epochs"] == 4
    assert a_round("+student.max_epochs=4", "trainer.max_epochs=5") == a_round("+student.max_epochs=4")


_RUN = """
import json, logging, sys, time
from pathlib import Path
from tapir_exp.student.shared import shared_training

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
cache, out, marks = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

def fit(d):
    (marks / f"training-{out.name}").touch()
    while not (marks / "release").exists():  # the test decides when the first training ends
        time.sleep(0.05)
    (d / "model.safetensors").write_bytes(b"weights of " + out.name.encode())
    return {"steps": 3}

out.mkdir()
print(json.dumps(shared_training(cache, "round0", {"config": {"seed": 1}, "inputs": {}}, fit)(out)))
"""


def test_runs_started_together_train_the_shared_student_once(tmp_path):
    """Two processes with the same key at the same time: the second waits for the first's training and links
    its student instead of training a second time (a launcher's parallel jobs of one seed)."""
    import subprocess
    import sys
    import time

    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "run.py"
    script.write_text(_RUN)

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        err = tmp_path / f"{name}.err"
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "students"), str(tmp_path / name),
                                 str(marks)], stdout=subprocess.PIPE, stderr=err.open("w"), text=True)
        return proc, err

    def wait_for(what, seconds: float = 120) -> None:
        end = time.monotonic() + seconds
        while not what():
            assert time.monotonic() < end, "timed out"
            time.sleep(0.05)

    procs: list[subprocess.Popen] = []
    try:
        first, _ = start("run1")
        procs.append(first)
        wait_for(lambda: (marks / "training-run1").exists())
        second, second_err = start("run2")
        procs.append(second)
        # the second either waits for the lock (right) or starts training itself (the bug this test is about)
        wait_for(lambda: "waiting for another run" in second_err.read_text() or (marks / "training-run2").exists())
        assert not (marks / "training-run2").exists(), "the second run trained while the first was training"
        (marks / "release").touch()
        out1, _ = first.communicate(timeout=120)
        out2, _ = second.communicate(timeout=120)
    finally:
        (marks / "release").touch()  # a failed test must not leave its runs waiting for it
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first.returncode == second.returncode == 0, second_err.read_text()
    counts1, counts2 = json.loads(out1), json.loads(out2)
    assert counts2["shared_from"] == counts1["shared_to"] and counts2["steps"] == 3
    assert not (marks / "training-run2").exists()
    assert (tmp_path / "run2" / "model.safetensors").read_bytes() == b"weights of run1"
