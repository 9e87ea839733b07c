"""RunStore: atomic artifacts that survive SIGKILL mid-write, signatures that re-run only what changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tapir_exp.files import atomic_write_text
from tapir_exp.records import Example
from tapir_exp.store import RunStore, verify_run

REPO = Path(__file__).resolve().parents[1]


def ex(i: int) -> Example:
    return Example(id=f"x{i}", instruction=f"instruction {i}", output=f"answer {i}")


def test_done_step_is_reused_and_changed_config_reruns_only_its_step(tmp_path):
    calls: list[str] = []

    def make(tag):
        def compute():
            calls.append(tag)
            return [ex(1), ex(2)], {"tag": tag}
        return compute

    s = RunStore(tmp_path)
    a = s.run_records_step("a", 0, {"k": 1}, {}, make("a"))
    b = s.run_records_step("b", 0, {"k": 1}, {"a": a.entry.artifact_hash}, make("b"))
    first_b_signature = b.entry.signature
    assert calls == ["a", "b"] and not a.reused
    s2 = RunStore(tmp_path)  # a new process: the manifest on disk is the memory
    a2 = s2.run_records_step("a", 0, {"k": 1}, {}, make("a"))
    b2 = s2.run_records_step("b", 0, {"k": 2}, {"a": a2.entry.artifact_hash}, make("b"))
    assert a2.reused and not b2.reused and calls == ["a", "b", "b"]
    steps = {(e["round"], e["step"]): e for e in json.loads((tmp_path / "manifest.json").read_text())["steps"]}
    assert set(steps) == {(0, "a"), (0, "b")}
    assert steps[(0, "b")]["signature"] != first_b_signature and steps[(0, "b")]["counts"]["records"] == 2


def test_tampered_artifact_is_recomputed(tmp_path):
    s = RunStore(tmp_path)
    r = s.run_records_step("a", 0, {}, {}, lambda: ([ex(1)], {}))
    r.path.write_text(r.path.read_text().replace("answer 1", "edited"))
    again = RunStore(tmp_path).run_records_step("a", 0, {}, {}, lambda: ([ex(1)], {}))
    assert not again.reused


WRITER = """
import sys
from tapir_exp.files import atomic_write_text
big = "x" * 50_000_000
while True:
    atomic_write_text(sys.argv[1], big)
"""


def test_sigkill_mid_write_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "artifact.txt"
    atomic_write_text(target, "complete old content")
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env={**os.environ, "PYTHONPATH": str(REPO)})
        time.sleep(0.6)  # inside some write of 50 MB
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        text = target.read_text()
        assert text in ("complete old content", "x" * 50_000_000)  # old or new, never a torn mix
    # the temporaries of interrupted writes are cleaned up when a store opens the run directory
    RunStore(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_the_leader_leaves_the_writes_every_rank_makes_at_start_alone(tmp_path):
    # every rank of a multi-process job writes the config snapshot and redacts Hydra's files while the leader
    # opens its store: a temporary there may be another rank's write in flight (deleting it made that rank's
    # rename fail, tests/test_multiprocess_job.py). A step's temporaries are the leader's own, left by a kill.
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "round_0").mkdir()
    in_flight = [tmp_path / ".hydra" / ".config.yaml.ab12.tmp", tmp_path / ".config.yaml.cd34.tmp",
                 tmp_path / ".config.plan.yaml.ef56.tmp"]
    stale = [tmp_path / "round_0" / ".pool.jsonl.gh78.tmp", tmp_path / ".manifest.json.ij90.tmp",
             tmp_path / "round_0" / ".hydra.jsonl.kl12.tmp"]
    for f in in_flight + stale:
        f.write_text("partial")
    RunStore(tmp_path, rank=1)  # a follower removes nothing
    assert all(f.exists() for f in in_flight + stale)
    RunStore(tmp_path)
    assert all(f.exists() for f in in_flight) and not any(f.exists() for f in stale)


# --------------------------------------------------------------------------- resume without reading artifacts

def rchar() -> int:
    """Bytes this process read through read()-like syscalls, page-cache hits and sparse holes included."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def big_checkpoint(tmp: Path) -> dict:
    """A 1 GiB sparse file (real bytes to any reader, no disk blocks) and a small config beside it."""
    with open(tmp / "model-00001-of-00001.bin", "wb") as fh:
        fh.truncate(1 << 30)
    (tmp / "config.json").write_text('{"layers": 2}')
    return {"files": 2}


def test_reused_step_reads_no_artifact_and_full_check_catches_a_silent_edit(tmp_path):
    s = RunStore(tmp_path)
    first = s.run_dir_step("student", 0, {"k": 1}, {}, big_checkpoint)
    assert not first.reused and set(first.entry.files) == {"model-00001-of-00001.bin", "config.json"}
    before = rchar()
    again = RunStore(tmp_path).run_dir_step("student", 0, {"k": 1}, {}, lambda tmp: pytest.fail("recomputed"))
    read = rchar() - before
    assert again.reused and read < 10_000_000, read  # the manifest only, not 1 GiB of checkpoint

    big = tmp_path / "round_0" / "student" / "model-00001-of-00001.bin"
    st = big.stat()
    with open(big, "r+b") as fh:  # an edit behind the store's back that keeps size and mtime
        fh.seek(1 << 29)
        fh.write(b"\x01")
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert RunStore(tmp_path).run_dir_step("student", 0, {"k": 1}, {}, lambda tmp: pytest.fail("x")).reused
    report = verify_run(tmp_path)
    assert report.problems == ["step 0/student: round_0/student/model-00001-of-00001.bin: content changed "
                               "(size and mtime unchanged)"]
    assert report.bytes_read >= 1 << 30


def test_touched_artifact_is_rehashed_once_and_restamped(tmp_path):
    s = RunStore(tmp_path)
    r = s.run_records_step("a", 0, {}, {}, lambda: ([ex(1)], {}))
    os.utime(r.path, ns=(0, r.entry.files["a.jsonl"][1] + 10**9))  # a copy without -p / a touch: same content
    s2 = RunStore(tmp_path)
    assert s2.run_records_step("a", 0, {}, {}, lambda: pytest.fail("recomputed")).reused
    restamped = json.loads((tmp_path / "manifest.json").read_text())["steps"][0]["files"]["a.jsonl"]
    assert restamped[1] == r.path.stat().st_mtime_ns and restamped[2] == r.entry.files["a.jsonl"][2]


def test_added_file_in_a_directory_artifact_means_not_done(tmp_path):
    s = RunStore(tmp_path)
    r = s.run_dir_step("d", 0, {}, {}, lambda tmp: (tmp / "w.bin").write_bytes(b"w") and {})
    (r.path / "stray.txt").write_text("x")
    calls = []
    again = RunStore(tmp_path).run_dir_step("d", 0, {}, {}, lambda tmp: calls.append(1) or (tmp / "w.bin").write_bytes(b"w") and {})
    assert not again.reused and calls == [1]


def test_manifest_without_fingerprints_is_upgraded_on_first_check(tmp_path):
    s = RunStore(tmp_path)
    s.run_records_step("a", 0, {}, {}, lambda: ([ex(1)], {}))
    doc = json.loads((tmp_path / "manifest.json").read_text())
    for e in doc["steps"]:
        e.pop("files")
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    assert RunStore(tmp_path).run_records_step("a", 0, {}, {}, lambda: pytest.fail("recomputed")).reused
    assert json.loads((tmp_path / "manifest.json").read_text())["steps"][0]["files"]


def test_verify_cli_reports_and_forgets_changed_steps(tmp_path):
    s = RunStore(tmp_path)
    a = s.run_records_step("a", 0, {}, {}, lambda: ([ex(1)], {}))
    s.run_dir_step("d", 1, {}, {"a": a.entry.artifact_hash}, lambda tmp: (tmp / "w.bin").write_bytes(b"w") and {})
    cmd = [sys.executable, "-c", "from tapir_exp.cli import verify_main; verify_main()"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "2 artifacts, 2 files" in ok.stdout and "all match" in ok.stdout, ok.stdout
    (tmp_path / "round_1" / "d" / "w.bin").unlink()
    (tmp_path / "round_1" / "d" / "new.bin").write_bytes(b"n")
    bad = subprocess.run([*cmd, str(tmp_path), "--forget"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert "step 1/d: round_1/d/new.bin: added" in bad.stdout and "step 1/d: round_1/d/w.bin: removed" in bad.stdout
    assert [e["step"] for e in json.loads((tmp_path / "manifest.json").read_text())["steps"]] == ["a"]
    missing = subprocess.run([*cmd, str(tmp_path / "nope")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "no manifest.json here" in missing.stderr


def test_digests_stay_those_that_existing_run_directories_recorded(tmp_path):
    """Signatures and manifests on disk hold these digests: a change to the file helpers that moves them would
    make every existing run recompute from scratch (values computed before the helpers left store.py)."""
    from omegaconf import OmegaConf

    from tapir_exp.files import file_hash, stable_hash
    from tapir_exp.records import records_hash

    (tmp_path / "ckpt" / "sub").mkdir(parents=True)
    (tmp_path / "ckpt" / "config.json").write_text('{"a": 1}\n')
    (tmp_path / "ckpt" / "sub" / "w.bin").write_bytes(bytes(range(256)) * 3)
    (tmp_path / "a.jsonl").write_text('{"x": "ü"}\n')
    config = OmegaConf.create({"b": [1, "ü"], "a": {"x": None}})
    assert stable_hash({"step": "judge", "config": config, "inputs": {"pool": "0123"}}) == "99500b6eeadbd419"
    assert file_hash(tmp_path / "ckpt") == "8197e064fa437876" and file_hash(tmp_path / "a.jsonl") == "09d8b525ef2ba73d"
    pool = [Example(id="1", instruction="Add 2 and 3.", output="5", task="Math"),
            Example(id="2", instruction="Say hi", output="hi")]
    assert records_hash(pool) == stable_hash([ex.to_dict() for ex in pool]) == "2e9f68c888b2250d"


def test_a_signature_names_files_by_content_and_student_caches_not_at_all(tmp_path):
    """A run moved to another directory keeps its signatures: an eval file under the project is named by
    what it holds (so an edit in place is noticed), and where the base student is cached names nothing."""
    from tapir_exp.config import naming_tree

    def eval_config(root: Path) -> dict:
        return {"alpaca_eval": {"path": str(root / "eval.json"), "max_items": None}, "out": str(root)}

    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        (root / "eval.json").write_text('[{"instruction": "Say hi."}]')
    s = RunStore(tmp_path / "run")
    # a directory stays as written (the step names what it reads through its inputs)
    assert s.signature("eval", eval_config(a)) != s.signature("eval", eval_config(b))
    same_dir = {**eval_config(b), "out": str(a)}
    assert s.signature("eval", eval_config(a)) == s.signature("eval", same_dir)
    (b / "eval.json").write_text('[{"instruction": "Say bye."}]')
    assert s.signature("eval", eval_config(a)) != s.signature("eval", {**eval_config(b), "out": str(a)})

    student = {"init": {"_target_": "Base", "facts": 400, "cache_dir": str(a)}, "max_epochs": 3}
    moved = {**student, "init": {**student["init"], "cache_dir": str(b)}}
    assert naming_tree("student", moved) == naming_tree("student", student) == {
        "init": {"_target_": "Base", "facts": 400}, "max_epochs": 3}
