"""RunStore: atomic artifacts that survive SIGKILL mid-write, signatures that re-run only what changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tapir_exp.records import Example
from tapir_exp.store import RunStore, atomic_write_text

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
from tapir_exp.store import atomic_write_text
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
