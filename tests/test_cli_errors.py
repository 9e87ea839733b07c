"""Bad input: one clear line naming file, line and field; exit code 2; skip mode keeps the good records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tapir_exp.records import read_records

CASES = {
    "malformed": (b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n',
                  "malformed.jsonl:line 2: malformed JSON (Expecting value at column 1)"),
    "empty": (b'{"instruction": "a"}\n{"instruction": "", "output": "x"}\n',
              "empty.jsonl:line 2: field 'instruction': empty (expected a non-empty string)"),
    "types": (b'{"instruction": 5}\n', "types.jsonl:line 1: field 'instruction': expected a string, got int"),
    "bytes": (b'{"instruction": "a\xff"}\n', "bytes.jsonl:line 1: not valid UTF-8 (byte 18: b'\\xff')"),
    "dup": (b'{"id": "x", "instruction": "a"}\n{"id": "x", "instruction": "b"}\n',
            "dup.jsonl:line 2: field 'id': duplicate id 'x' (first seen at line 1)"),
}


def tapir(args, cwd):
    return subprocess.run([sys.executable, "-m", "tapir_exp.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TAPIR_ROOT": str(cwd), "WANDB_MODE": "offline",
                               "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_one_line_exit_2(tmp_path, name):
    content, message = CASES[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(content)
    r = tapir(["data=jsonl", f"data.path={path}", "mode=plan", "logger=none"], tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1] == f"tapir: error: {path.parent}/{message}", r.stderr
    assert "Traceback" not in r.stderr


def test_missing_file(tmp_path):
    r = tapir(["data=jsonl", f"data.path={tmp_path}/nope.jsonl", "mode=plan", "logger=none"], tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"tapir: error: {tmp_path}/nope.jsonl: file does not exist"


def test_skip_mode_keeps_good_records_and_reports_rejects(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(CASES["empty"][0] + b'{"instruction": "fine", "output": "ok"}\n')
    res = read_records(path, on_error="skip")
    assert [ex.instruction for ex in res.records] == ["a", "fine"]
    assert len(res.rejected) == 1 and "line 2" in json.dumps(res.rejected[0], default=str)
