"""Per-optimizer-step training metrics reach W&B (read back from the offline run files) while the round is
still training, and the CSV / metrics.jsonl trackers get the same rows; a resumed run logs nothing twice."""

from __future__ import annotations

import csv
import json

import lightning as L
import pytest

from tapir_exp.student.live_metrics import LiveMetrics
from tapir_exp.student.train import train_round
from tapir_exp.tracking import CSVTracker, WandbTracker
from tests.support_wandb import history, metric_defs, wait_for
from tests.test_student import CONVS, student_cfg, tiny, trainer_cfg  # noqa: F401 (fixture)

KEYS = {"loss", "lr", "grad_norm", "tokens_per_s", "nonpad_fraction", "progress"}


class ReadBackMidTraining(L.Callback):
    """At optimizer step 3 (of 12) waits until the W&B run files hold the steps logged so far."""

    def __init__(self, run_dir):
        self.run_dir, self.seen, self.at = run_dir, [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != 3 or self.at is not None:
            return
        self.at = (trainer.global_step, trainer.estimated_stepping_batches)
        # W&B's core flushes its transaction log every few seconds
        self.seen = wait_for(lambda: [r for r in history(self.run_dir) if "train_step/loss" in r],
                             lambda rows: len(rows) >= 3)


@pytest.mark.slow
def test_step_metrics_stream_to_wandb_csv_and_jsonl_while_training(tiny, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    wb_dir, csv_dir = tmp_path / "wb", tmp_path / "csv"
    wb_dir.mkdir()
    csv_dir.mkdir()
    cfg = {"name": "live", "run_name": "x=1,seed=7", "seed": 7}
    wb, sheet = WandbTracker(str(wb_dir), cfg, project="tapir-test"), CSVTracker(str(csv_dir))
    wb.log_metrics({"round/mean_mfd": 0.4}, step=0)
    probe = ReadBackMidTraining(wb_dir)
    t = train_round(tiny, CONVS, tmp_path / "out", student_cfg=student_cfg(), trainer_cfg=trainer_cfg(),
                    work_dir=tmp_path / "work", seed=0,
                    callbacks=[LiveMetrics(wb.log_train_step, 1), LiveMetrics(sheet.log_train_step, 1), probe])
    wb.finish()
    assert t.steps == 12 and probe.at == (3, 12)
    # while the round was still training, its first steps were already in the W&B run files
    assert [r["train_step/step"] for r in probe.seen[:3]] == [1, 2, 3]
    steps = wait_for(lambda: [r for r in history(wb_dir) if "train_step/loss" in r], lambda rows: len(rows) >= 12)
    assert [r["train_step/step"] for r in steps] == list(range(1, 13))
    assert all({k.removeprefix("train_step/") for k in r} >= KEYS for r in steps)
    assert [r["train_step/loss"] for r in steps] == [round(x, 6) for x in t.losses] or \
        all(abs(r["train_step/loss"] - x) < 1e-5 for r, x in zip(steps, t.losses, strict=True))
    assert all(r["train_step/grad_norm"] > 0 and 0 < r["train_step/nonpad_fraction"] <= 1 and
               r["train_step/tokens_per_s"] > 0 for r in steps)
    # the LR each update used, as the training log has it (the cosine ends at min_lr_ratio * lr = 0 on the last)
    assert all(abs(r["train_step/lr"] - lr) < 1e-12 for r, lr in zip(steps, t.lrs, strict=True))
    assert all(r["train_step/lr"] > 0 for r in steps[:-1]) and steps[-1]["train_step/lr"] == 0
    assert [r["train_step/progress"] for r in steps] == [round(1 + i / 12, 6) for i in range(1, 13)]
    assert "train_step/gpu_mem_gb" not in steps[0]  # CPU: no GPU memory to report
    defs = metric_defs(wb_dir)
    assert defs["train_step/*"] == "train_step/progress" and defs["round/mean_mfd"] == "round"
    # the CSV tracker: the same rows in train_steps.csv and metrics.jsonl
    with open(csv_dir / "train_steps.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["train_step"]) for r in rows] == list(range(1, 13))
    assert [float(r["loss"]) for r in rows] == [r["train_step/loss"] for r in steps] or \
        all(abs(float(a["loss"]) - b["train_step/loss"]) < 1e-5 for a, b in zip(rows, steps, strict=True))
    jsonl = [json.loads(x) for x in (csv_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_step"] for r in jsonl] == list(range(1, 13)) and all(r["round"] == 1 for r in jsonl)

    # A resumed attempt (same run directory): the rounds and steps already logged are not logged again.
    again = WandbTracker(str(wb_dir), cfg, project="tapir-test")
    again.log_metrics({"round/mean_mfd": 0.4}, step=0)
    assert not again.log_train_step(1, 12, {"loss": 1.0, "progress": 2.0})
    assert again.log_train_step(1, 13, {"loss": 1.0, "progress": 2.0})
    again.log_metrics({"round/mean_mfd": 0.3}, step=1)
    again.finish()
    rows = wait_for(lambda: history(wb_dir), lambda rows: sum("train_step/step" in r for r in rows) >= 13)
    assert [r["round"] for r in rows if "round/mean_mfd" in r] == [0, 1]
    assert [r["train_step/step"] for r in rows if "train_step/step" in r] == list(range(1, 14))
