"""The embedded default, for real: local SmolLM2 as every oracle role, tiny student, demo data — the
`tapir debug=fast` preset of the README's first command (which runs the same code at full size)."""

from __future__ import annotations

import json

import pytest

from tests.support_pipeline import run_tapir


@pytest.mark.slow
def test_debug_fast_runs_every_step_on_the_local_oracle(tmp_path):
    proc = run_tapir(["debug=fast", "logger=csv", "oracle.progress=false"], tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "outputs/default/debug=fast"
    summary = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    r1 = summary["rounds"][1]
    assert r1["judged"] == 16 and r1["hard_count"] > 0 and r1["expanded"] > 0 and r1["round_size"] == 12
    for step in ("teacher", "classify", "warmup_data"):
        assert (run / "round_0" / f"{step}.jsonl").stat().st_size > 0
    for step in ("student_answers", "mfd", "expand", "mix", "dataset"):
        assert (run / "round_1" / f"{step}.jsonl").stat().st_size > 0
    judged = [json.loads(x) for x in (run / "round_1/mfd.jsonl").read_text().splitlines()]
    assert all(j["meta"]["judge"]["orders"]["ts"]["method"] == "logprob" for j in judged if j["meta"]["mfd"] is not None)
    assert (run / "final_student/config.json").is_file()
    assert "round 2" in proc.stdout and "mean MFD" in proc.stdout
    lines = (run / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in lines] == ["step", "0", "1", "2"]  # a row per round, round 0 included
    usage = json.loads((run / "oracle_usage.json").read_text())
    assert usage["total"]["requests"] > 0 and usage["total"]["failures"] == 0
    # the same command again: everything from the store and the cache, no new oracle request
    again = run_tapir(["debug=fast", "logger=csv", "oracle.progress=false"], tmp_path, timeout=600)
    assert again.returncode == 0
    assert json.loads((run / "oracle_usage.json").read_text())["total"]["requests"] == usage["total"]["requests"]
