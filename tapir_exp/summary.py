"""The run summary: one record per round (sizes, task mix, MFD, training, eval, oracle usage, seconds),
saved as ``<run_dir>/summary.json`` after every round (what ``tapir-report`` reads) and printed as a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tapir_exp.config import redacted_container
from tapir_exp.files import atomic_write_json


class RunSummary:
    FILE = "summary.json"

    def __init__(self, run_dir: Path, cfg: DictConfig | None = None, readonly: bool = False):
        self.path, self.readonly = Path(run_dir) / self.FILE, readonly  # readonly: a follower rank
        self.doc: dict[str, Any] = {"rounds": []}
        if self.path.exists():
            self.doc = json.loads(self.path.read_text(encoding="utf-8"))
        if cfg is not None:
            self.doc.update(name=cfg.name, run_name=cfg.run_name, config=redacted_container(cfg))

    def round(self, r: int) -> dict[str, Any]:
        for rec in self.doc["rounds"]:
            if rec["round"] == r:
                return rec
        rec = {"round": r, "seconds": {}}
        self.doc["rounds"].append(rec)
        self.doc["rounds"].sort(key=lambda x: x["round"])
        return rec

    def update(self, r: int, **values: Any) -> None:
        self.round(r).update(values)

    def record_environment(self, r: int) -> None:
        """The environment round r was computed in (tapir_exp.environment): kept from the process that first
        finished the round, so re-running a finished run does not relabel it."""
        from tapir_exp.environment import describe, env_id

        rec = self.round(r)
        if "environment" not in rec:
            env = describe()
            rec["environment"] = env_id(env)
            self.doc.setdefault("environments", {})[rec["environment"]] = env

    def add_seconds(self, r: int, step: str, seconds: float) -> None:
        self.round(r).setdefault("seconds", {})[step] = seconds

    def save(self) -> None:
        if not self.readonly:
            atomic_write_json(self.path, self.doc)

    def flat_metrics(self, r: int) -> dict[str, float]:
        """Scalars of round r for a logger: sizes, hard fraction, MFD, losses, eval, oracle usage, seconds."""
        return self.flatten(self.round(r))

    @staticmethod
    def flatten(rec: dict[str, Any]) -> dict[str, float]:
        """One round record of summary.json as flat ``group/key`` scalars (also read by tapir-report)."""
        out: dict[str, float] = {}
        for key in ("pool_size", "judged", "hard_count", "hard_fraction", "alpha", "round_size", "expanded",
                    "expanded_hard_fraction", "mean_mfd", "refined", "student_prompts_shortened", "wall_seconds"):
            if isinstance(rec.get(key), int | float):
                out[f"round/{key}"] = rec[key]
        for key, val in (rec.get("train") or {}).items():
            if isinstance(val, int | float):
                out[f"train/{key}"] = val
        for key, val in (rec.get("eval") or {}).items():
            if isinstance(val, int | float):
                out[key if "/" in key else f"eval/{key}"] = val
        for key, val in (rec.get("oracle") or {}).items():
            if isinstance(val, int | float):
                out[f"oracle/{key}"] = val
        for step, sec in (rec.get("seconds") or {}).items():
            if isinstance(sec, int | float):
                out[f"seconds/{step}"] = sec
        for label, n in (rec.get("task_mix_after") or {}).items():
            out[f"task_mix_after/{label}"] = n
        for label, n in (rec.get("task_mix_before") or {}).items():
            out[f"task_mix_before/{label}"] = n
        return out


def _top(mix: dict[str, int] | None, k: int = 4) -> str:
    if not mix:
        return "-"
    total = sum(mix.values()) or 1
    items = sorted(mix.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{lab} {100 * n / total:.0f}%" for lab, n in items)


def console() -> Any:
    """A rich console that cuts nothing: as wide as the terminal on a terminal; otherwise (a SLURM log, a
    pipe) wide enough for any table, which then prints at its natural width instead of rich's default 80
    columns with numbers ending in "…"."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=100_000, soft_wrap=True)


def print_round(rec: dict[str, Any]) -> None:
    """A compact per-round summary on the console."""
    from rich.table import Table

    r = rec["round"]
    t = Table(title=f"round {r}" + (" (warm-up)" if r == 0 else ""), show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    if r > 0:
        t.add_row("pool / judged / hard", f"{rec.get('pool_size')} / {rec.get('judged')} / {rec.get('hard_count')}"
                  f" ({100 * (rec.get('hard_fraction') or 0):.0f}%)")
        hard_new = rec.get("expanded_hard_fraction")
        t.add_row("round size (alpha)", f"{rec.get('round_size')} (alpha {rec.get('alpha')})  expanded {rec.get('expanded')}"
                  + (f" ({100 * hard_new:.0f}% hard)" if hard_new is not None else "") + f"  refined {rec.get('refined')}")
        t.add_row("mean MFD", str(rec.get("mean_mfd")))
        t.add_row("task mix before", _top(rec.get("task_mix_before")))
        t.add_row("task mix after", _top(rec.get("task_mix_after")))
    tr = rec.get("train") or {}
    if tr:
        t.add_row("train loss", f"{_fmt(tr.get('first_loss'))} -> {_fmt(tr.get('final_loss'))} ({tr.get('steps')} steps)")
        if tr.get("examples_per_step") is not None:  # effective batch, to compare with a paper's
            t.add_row("batch / step", f"{tr['examples_per_step']} examples, {tr.get('tokens_per_step')} tokens "
                                      f"over {tr.get('world_size')} processes")
    ev = rec.get("eval") or {}
    if ev:
        shown = {k: v for k, v in ev.items()
                 if k in ("alpaca_eval/win_rate", "alpaca_eval/lc_win_rate", "mt_bench/score", "skills/accuracy")}
        t.add_row("eval", ", ".join(f"{k} {_fmt(v)}" for k, v in shown.items()) or "-")
        from tapir_exp.eval.protocol import describe

        for suite, line in describe(ev).items():
            t.add_row(f"{suite} protocol", line)
    o = rec.get("oracle") or {}
    if o:
        t.add_row("oracle", f"{o.get('requests', 0)} calls, {o.get('prompt_tokens', 0)}+{o.get('completion_tokens', 0)} tokens,"
                  f" ${o.get('cost_usd', 0.0):.4f}, cache hits {o.get('cache_hits', 0)}")
    secs = rec.get("seconds") or {}
    t.add_row("seconds", ", ".join(f"{k} {v:.1f}" for k, v in secs.items() if isinstance(v, int | float)) or "-")
    console().print(t)


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)
