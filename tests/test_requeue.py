"""Pre-emption the way a cluster does it, on this CPU: a multirun job through hydra's submitit launcher
(``hydra/launcher=local``) whose wall time is shorter than the run. submitit's local executor sends its
preemption signal 30 s before the timeout; training saves a checkpoint at the end of the
current optimizer step and hands over to submitit's handler, which requeues the job (``max_num_timeout``);
the requeued job resumes from the run store and from that checkpoint. Nothing here signals or resubmits by
hand (tests/test_pipeline_e2e.py kills and resubmits by hand)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tapir_exp.records import read_jsonl
from tapir_exp.testing.openai_server import FakeOpenAIServer
from tests.support_pipeline import fast_overrides, responder, run_tapir

pytestmark = pytest.mark.slow

CONCURRENCY = 8  # oracle.limits.concurrency in fast_overrides: the most requests one interruption can lose


def _datasets(root: Path) -> dict[str, list[dict]]:
    run_dir = next(p.parent for p in (root / "outputs").glob("*/*/manifest.json"))
    return {p.parent.name: read_jsonl(p) for p in sorted(run_dir.glob("round_*/dataset.jsonl"))}


def _students(root: Path) -> dict[int, dict]:
    manifest = json.loads(next((root / "outputs").glob("*/*/manifest.json")).read_text())
    return {e["round"]: e["counts"] for e in manifest["steps"] if e["step"] == "student"}


def test_submitit_timeout_signal_checkpoints_training_and_requeues(tmp_path):
    # One round. In the first attempt the warm-up (6 epochs x 6 batches) is paced at 2.5 s per optimizer step,
    # so it is still training when the signal comes, 90 s into the attempt (2 min wall time; submitit's local
    # executor signals 30 s before it), however fast the machine; the requeued attempts run unpaced.
    args = fast_overrides("{url}") + ["curriculum.rounds=1", "steps.warmup.epochs=6", "student.max_epochs=2",
                                      "eval.alpaca_eval.enabled=false", "eval.mt_bench.enabled=false"]
    with FakeOpenAIServer(responder=responder) as srv:
        args = [a.replace("{url}", srv.base_url) for a in args]
        ref_root = tmp_path / "reference"
        ref_root.mkdir()
        ref = run_tapir(args, ref_root, timeout=900)
        assert ref.returncode == 0, ref.stderr[-3000:]
        reference_requests = srv.request_count

        root = tmp_path / "requeued"
        root.mkdir()
        job = run_tapir(["--multirun", "hydra/launcher=local", "hydra.launcher.timeout_min=2",
                         "hydra.launcher.max_num_timeout=5",
                         "+hydra.callbacks.pace._target_=tests.support_pacing.PaceTraining",
                         "+hydra.callbacks.pace.seconds=2.5", *args], root, timeout=1500)
        paid = srv.request_count - reference_requests
    log = "\n".join(p.read_text(errors="ignore") for p in (root / "outputs").glob("*/.submitit/*/*_log.*"))
    assert job.returncode == 0, job.stderr[-2000:] + "\n".join(ln for ln in log.splitlines() if "submitit" in ln)
    requeues = re.findall(r"Requeued job \S+ \((\d+) remaining timeouts\)", log)
    assert requeues, log[-3000:]  # submitit itself requeued the job at least once
    saved = [int(s) for s in re.findall(r"training checkpoint saved at optimizer step (\d+)", log)]
    assert saved and all(s > 0 for s in saved), log[-3000:]  # the signal reached training, which saved
    students, reference = _students(root), _students(ref_root)
    resumed = [c["resumed_from"] for c in students.values() if c.get("resumed_from") is not None]
    assert resumed and set(resumed) <= set(saved)  # training went on from the signal's checkpoint
    assert {r: c["steps"] for r, c in students.items()} == {r: c["steps"] for r, c in reference.items()}
    assert _datasets(root) == _datasets(ref_root)
    # Every request paid once; only those in flight when a signal arrived may have been sent again.
    assert reference_requests <= paid <= reference_requests + CONCURRENCY * len(requeues)
