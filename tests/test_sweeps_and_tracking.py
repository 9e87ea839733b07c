"""Sweeps compose and launch (mode=plan: no model is called); trackers write what they promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tapir_exp.tracking import CSVTracker, WandbTracker

REPO = Path(__file__).resolve().parents[1]


def test_ablation_grid_is_one_multirun(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tapir_exp.cli", "--multirun", "--config-dir", str(REPO / "sweeps"),
                        "--config-name", "ablations", "mode=plan", "logger=none"], cwd=tmp_path, capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "TAPIR_ROOT": str(tmp_path), "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    plans = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "outputs/ablations").glob("*/plan.json")}
    assert set(plans) == {f"+ablation={a}" for a in ("full", "no_curriculum", "no_balance", "no_task_awareness",
                                                     "no_refine", "no_expand",
                                                     "random_selection")}
    assert plans["+ablation=no_curriculum"]["rounds"] == 1 and plans["+ablation=full"]["rounds"] == 3
    calls = {k: json.dumps(v) for k, v in plans.items()}
    assert calls["+ablation=no_expand"] != calls["+ablation=full"]  # fewer expander calls planned


def test_wandb_offline_resumes_same_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = {"name": "t", "run_name": "r", "oracle": {"backends": {"openai": {"api_key": "[redacted]"}}}}
    t = WandbTracker(str(tmp_path), cfg, project="tapir-test")
    first_id = t.run.id
    t.log_metrics({"round/mean_mfd": 0.5, "note": "text is skipped"}, step=0)
    t.log_histogram("mfd/distribution", [0.1, 0.2, 1.5], step=0)
    t.log_table("samples", ["id", "mfd"], [["a", 0.1]], step=0)
    t.finish()
    t2 = WandbTracker(str(tmp_path), cfg, project="tapir-test")
    assert t2.run.id == first_id  # derived from the run directory: a requeued job continues its W&B run
    t2.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 0, "round/mean_mfd": 0.5, "note": "text is skipped"}]


def test_a_credential_on_the_command_line_never_reaches_the_wandb_run(tmp_path, monkeypatch):
    # W&B's metadata records sys.argv; a key given as an override (`oracle.backends.openai.api_key=...`) would
    # be in the run file and on the server after a sync
    import sys

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    argv = ["tapir", "oracle.backends.openai.api_key=sk-SECRETxyz0123", "+student.init.hf_token=hftok4567",
            "generation.max_new_tokens=12"]
    monkeypatch.setattr(sys, "argv", list(argv))
    t = WandbTracker(str(tmp_path), {"name": "t", "run_name": "r"}, project="tapir-test")
    t.log_metrics({"round/mean_mfd": 0.5}, step=0)
    t.finish()
    assert sys.argv == argv  # given back as it was
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    data = run_file.read_bytes()
    assert b"generation.max_new_tokens=12" in data  # the command line is there ...
    assert b"SECRETxyz" not in data and b"hftok4567" not in data  # ... without its credentials


def test_csv_tracker_one_row_per_round(tmp_path):
    t = CSVTracker(str(tmp_path))
    t.log_metrics({"a": 1}, step=0)
    t.log_metrics({"a": 2, "b": 3}, step=1)
    t.log_metrics({"a": 4, "b": 5}, step=1)  # a resumed round replaces its row
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines == ["step,a,b", "0,1,", "1,4,5"]


def test_delta_sweep_and_wandb_sweep_name_real_config_keys(tmp_path):
    """Every swept name is an override tapir accepts (one value each, composed by Hydra)."""
    import yaml
    from hydra import compose, initialize_config_dir

    delta = yaml.safe_load((REPO / "sweeps/delta.yaml").read_text())
    values = str(delta["hydra"]["sweeper"]["params"]["steps.mfd.delta"]).split(",")
    wb = yaml.safe_load((REPO / "sweeps/wandb_sweep.yaml").read_text())
    assert "${args_no_hyphens}" in wb["command"] and wb["metric"]["name"] == "alpaca_eval/lc_win_rate"
    overrides = [f"steps.mfd.delta={values[-1]}"]
    for key, spec in wb["parameters"].items():
        value = spec["values"][0] if "values" in spec else spec["min"]
        overrides.append(f"{key}={value}")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("tapir", overrides=overrides)
    assert cfg.steps.mfd.delta == 0.0 and float(values[-1]) == 3.0 and len(values) == 5
    assert cfg.curriculum.alpha_start == 0.1 and cfg.trainer.lr == 1.0e-5


def test_plan_table_printed_whole_in_a_pipe_and_written_as_csv(tmp_path):
    """`tapir mode=plan ... | cat`: no column cut to rich's default 80 (no "…"); plan.csv beside plan.json."""
    import csv

    model = "a-judge-model-with-a-name-long-enough-to-push-the-table-past-eighty-columns"
    r = subprocess.run([sys.executable, "-m", "tapir_exp.cli", "mode=plan", "logger=none", "oracle=openai",
                        f"oracle.backends.openai.model={model}", f"+oracle.prices.{model}={{prompt: 3, completion: 9}}"],
                       cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "TAPIR_ROOT": str(tmp_path), "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "…" not in r.stdout and model in r.stdout
    plan_json = next((tmp_path / "outputs").glob("*/*/plan.json"))
    plan = json.loads(plan_json.read_text())
    total = plan["total"]
    assert f"{total['prompt_tokens']:,}" in r.stdout and f"{total['cost_usd']:.2f}" in r.stdout
    with open(plan_json.with_name("plan.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [(x["role"], x["step"], int(x["requests"])) for x in rows] == \
        [(x["role"], x["step"], x["requests"]) for x in plan["rows"]]


def test_round_table_printed_whole_when_not_a_terminal(capsys):
    from tapir_exp.summary import print_round

    mix = {f"Task label number {i} with a long name": 100 + i for i in range(6)}
    print_round({"round": 1, "pool_size": 52002, "judged": 52002, "hard_count": 31337, "hard_fraction": 0.6026,
                 "round_size": 20000, "alpha": 0.25, "expanded": 5000, "refined": 12345, "mean_mfd": 1.2345,
                 "task_mix_before": mix, "task_mix_after": mix,
                 "oracle": {"requests": 104004, "prompt_tokens": 123456789, "completion_tokens": 9876543,
                            "cost_usd": 1234.5678, "cache_hits": 4242},
                 "seconds": {"student_answers": 1234.5, "mfd": 5678.9, "expand": 12.3, "dataset": 456.7, "student": 7890.1}})
    out = capsys.readouterr().out
    assert "…" not in out
    assert "104004 calls, 123456789+9876543 tokens, $1234.5678, cache hits 4242" in out
    assert "student_answers 1234.5, mfd 5678.9, expand 12.3, dataset 456.7, student 7890.1" in out


def test_http_request_lines_stay_at_warning_unless_verbose(caplog):
    """The OpenAI SDK's HTTP library logs one INFO line per request; tapir keeps it quiet unless hydra.verbose."""
    import logging

    import openai

    from tapir_exp.cli import CHATTY_LOGGERS, quiet_http_logs
    from tapir_exp.testing.openai_server import FakeOpenAIServer

    def lines(verbose) -> int:
        quiet_http_logs(verbose)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        return sum("HTTP Request" in rec.getMessage() for rec in caplog.records)

    try:
        with FakeOpenAIServer() as srv:
            client = openai.OpenAI(base_url=srv.base_url, api_key="test-key")
            for name in CHATTY_LOGGERS:
                logging.getLogger(name).setLevel(logging.NOTSET)
            assert lines(True) == 1  # hydra.verbose=true: the library's own line is there
            assert lines(["httpx", "httpx2"]) == 1  # hydra.verbose=[httpx,httpx2]
            assert lines(False) == 0 and lines(None) == 0
    finally:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
