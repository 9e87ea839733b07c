"""A re-run of a finished pipeline whose student checkpoints hold over a gigabyte decides that every step is
done without reading them (the run store compares file stats), and `tapir-verify` still catches an edit
that kept size and mtime. The checkpoint's bulk is a 1 GiB sparse file: every byte of it is read by a hash
(rchar counts it), while the disk holds only its few real blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tapir_exp.testing.openai_server import FakeOpenAIServer
from tests.support_pipeline import REPO, fast_overrides, responder, run_tapir, tapir_env

pytestmark = pytest.mark.slow

BULK = "consolidated.00.pth"  # a stand-in for weights that an HF load does not read

# Runs `tapir` in-process after importing what a re-run imports, so that rchar counts the pipeline's reads
# (artifacts, manifest, configs), not the reading of Python modules.
DRIVER = """
import json, sys
import torch, transformers, lightning, hydra, omegaconf, sklearn  # noqa: F401
import tapir_exp.cli, tapir_exp.pipeline, tapir_exp.student.train, tapir_exp.eval.runner  # noqa: F401

def rchar():
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])

sys.argv = ["tapir", *sys.argv[1:]]
before = rchar()
try:
    tapir_exp.cli.main()
except SystemExit as e:
    if e.code:
        raise
print("RCHAR", rchar() - before)
"""


def checkpoint_source(root: Path) -> Path:
    """A local 'pretrained' checkpoint for student.init=PretrainedInit: a tiny Llama plus 1 GiB of bulk."""
    from tapir_exp.student.models import TinyLlamaInit

    src = root / "pretrained"
    TinyLlamaInit(vocab_size=512)(src, corpus=["Add two numbers and explain the answer step by step."] * 50)
    with open(src / BULK, "wb") as fh:
        fh.truncate(1 << 30)
    return src


def test_rerun_reuses_every_step_reading_no_checkpoint_and_verify_catches_tampering(tmp_path):
    src = checkpoint_source(tmp_path)
    with FakeOpenAIServer(responder=responder) as server:
        # contexts short enough that long demo items are shortened / cut: the summary must show it
        args = [*fast_overrides(server.base_url), "curriculum.rounds=1", "eval.mt_bench.enabled=false",
                "generation.max_input_tokens=96", "student.max_length=128",
                "~student.init", f"+student.init={{_target_: tapir_exp.student.models.PretrainedInit, "
                                 f"name_or_path: '{src}', dtype: float32}}"]
        first = run_tapir(args, tmp_path, timeout=900)
        assert first.returncode == 0, first.stderr[-3000:]
        run_dir = next(p.parent for p in (tmp_path / "outputs").glob("*/*/manifest.json"))
        manifest = (run_dir / "manifest.json").read_text()
        student_bytes = sum(f[0] for e in json.loads(manifest)["steps"] if e["step"] in ("init", "student")
                            for f in e["files"].values())
        assert student_bytes >= 1 << 30
        requests = server.request_count

        again = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=tmp_path, env=tapir_env(tmp_path),
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        read = int(again.stdout.split("RCHAR")[-1])
        print(f"re-run read {read} bytes")
        assert read < 10_000_000, read
        assert server.request_count == requests
    # every step reused: no entry was committed again (a recomputed step gets a new finished_at)
    assert (run_dir / "manifest.json").read_text() == manifest
    steps = {f"{e['round']}/{e['step']}" for e in json.loads(manifest)["steps"]}
    assert {"0/init", "0/student", "1/student_answers", "1/mfd", "1/student", "1/eval"} <= steps

    # nothing cut silently: the run summary counts shortened prompts and cut/dropped training examples
    rounds = {r["round"]: r for r in json.loads((run_dir / "summary.json").read_text())["rounds"]}
    assert rounds[1]["student_prompts_shortened"] > 0
    assert rounds[0]["train"]["answer_tail_cut"] > 0 and rounds[0]["train"]["dropped_prompt_too_long"] >= 0
    usage = json.loads((run_dir / "oracle_usage.json").read_text())
    assert usage["total"]["shortened"] == 0  # an HTTP oracle: the server owns its context

    bulk = run_dir / "round_0" / "student_init" / BULK
    st = bulk.stat()
    with open(bulk, "r+b") as fh:
        fh.seek(3 << 28)
        fh.write(b"tampered")
    os.utime(bulk, ns=(st.st_atime_ns, st.st_mtime_ns))
    verify = subprocess.run([sys.executable, "-c", "from tapir_exp.cli import verify_main; verify_main()",
                             str(run_dir)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"step 0/init: round_0/student_init/{BULK}: content changed (size and mtime unchanged)" in verify.stdout
    assert verify.stdout.count("content changed") == 1
