"""``tapir-report DIR [DIR ...] [--out report/]``: compare runs (or whole sweep directories).

Finds every ``summary.json`` under the given directories. Runs that differ only in their ``seed`` form one
setting: the comparison table of the last round (Markdown ``report.md`` and ``report.csv``) has one row per
setting with each metric's mean over seeds and its 95 % interval (Student t, mean +- t * sd / sqrt(n)); the
PNG plots per round (eval metrics, mean MFD and hard fraction, train loss) show the seed means with those
intervals as error bars. Every run on its own is in ``runs.csv``. Skills-world runs (``experiment=skills_*``) also get exact-match accuracy per task per round with 95 %
intervals, pooled over the seeds of each setting, and MFD's hard fraction per task over rounds; their paired
differences from full TAPIR, the warm-up student and plain distillation; and the warm-up student against issue
19's target, per seed and pooled. Every answer's correctness goes into ``skills_outcomes.csv``, so that
``--against`` can pair a grid with a committed report item by item when that grid's outputs are elsewhere.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from tapir_exp.errors import DataError, TapirError
from tapir_exp.stats import mean_ci, wilson
from tapir_exp.summary import RunSummary
from tapir_exp.tracking import setting_of

COLUMNS = ["alpaca_eval/win_rate", "alpaca_eval/lc_win_rate", "alpaca_eval/standard_error", "mt_bench/score",
           "round/mean_mfd", "round/hard_fraction", "round/round_size", "train/final_loss", "oracle/requests",
           "oracle/cost_usd"]


def find_runs(paths: list[str]) -> list[Path]:
    runs = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(p, None, None, "no such run or sweep directory")
        runs += [s.parent for s in sorted(p.rglob("summary.json"))] if p.is_dir() else []
    if not runs:
        raise TapirError(f"no summary.json under {', '.join(paths)} (has the run finished a round?)")
    return runs


def load(run: Path) -> dict[str, Any]:
    try:
        doc = json.loads((run / "summary.json").read_text())
    except json.JSONDecodeError as e:
        raise DataError(run / "summary.json", f"line {e.lineno}", None, f"malformed JSON: {e.msg}") from e
    rounds = doc.get("rounds") or []
    per_round = [RunSummary.flatten(r) for r in rounds]
    label = f"{doc.get('name', run.parent.name)}/{doc.get('run_name', run.name)}"
    # runs that differ only in their seed form one setting (seed means in the tables and plots)
    saved = run / ".hydra" / "overrides.yaml"  # the job's overrides: the run name may be cut and hashed
    overrides = [str(o) for o in (yaml.safe_load(saved.read_text()) or [])] if saved.is_file() else None
    setting = setting_of(str(doc.get("run_name", run.name)), overrides, max_len=200)
    return {"run": str(run), "label": label, "setting": f"{doc.get('name', run.parent.name)}/{setting}",
            "overrides": overrides, "seed": (doc.get("config") or {}).get("seed"), "rounds": rounds,
            "environments": doc.get("environments") or {},
            "per_round": [dict(pr, round=rec["round"]) for pr, rec in zip(per_round, rounds, strict=True)]}


def name_settings_by_difference(runs: list[dict[str, Any]]) -> None:
    """Name each setting by the overrides that tell it apart: those every run shares say nothing in a
    comparison (and make labels too long to read)."""
    if len(runs) < 2 or any(r["overrides"] is None for r in runs):
        return
    sets = [set(setting_of("", r["overrides"], max_len=10_000).split(",")) for r in runs]
    common = set.intersection(*sets)
    if all(s == common for s in sets):
        return
    for r, own in zip(runs, sets, strict=True):
        name = r["setting"].split("/", 1)[0]
        r["setting"] = f"{name}/" + (",".join(sorted(own - common)) or "(base)")


def by_setting(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[r["setting"]].append(r)
    return dict(sorted(groups.items()))


def last_round(run: dict[str, Any]) -> dict[str, Any]:
    return run["per_round"][-1] if run["per_round"] else {}


def write_tables(runs: list[dict[str, Any]], out: Path) -> None:
    cols = [c for c in COLUMNS if any(c in last_round(r) for r in runs)]
    with open(out / "runs.csv", "w", newline="") as fh:  # every run on its own
        w = csv.writer(fh)
        w.writerow(["run", "setting", "seed", "rounds", *cols])
        w.writerows([[r["label"], r["setting"], r["seed"], len(r["rounds"]) - 1, *(last_round(r).get(c) for c in cols)]
                     for r in runs])
    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    csv_rows, md_rows = [], []
    for setting, group in by_setting(runs).items():
        rounds = sorted({len(r["rounds"]) - 1 for r in group})
        cells, md = [], []
        for c in cols:
            values = [last_round(r)[c] for r in group if isinstance(last_round(r).get(c), int | float)]
            mean, half = mean_ci(values) if values else (None, None)
            cells += [mean, half]
            md.append("" if mean is None else fmt(mean) + ("" if half is None else f" ± {half:.2g}"))
        rounds_s = "/".join(map(str, rounds))
        csv_rows.append([setting, len(group), rounds_s, *cells])
        md_rows.append(f"| {setting} | {len(group)} | {rounds_s} | " + " | ".join(md) + " |")
    with open(out / "report.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["setting", "seeds", "rounds", *(f"{c}{suffix}" for c in cols for suffix in ("", " ci95"))])
        w.writerows(csv_rows)
    lines = ["| setting | seeds | rounds | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3), *md_rows]
    (out / "report.md").write_text(
        "# tapir-report\n\nLast round; runs that differ only in their seed are one setting: mean over seeds ± the "
        "half-width of its 95 % interval (Student t). Each run: runs.csv.\n\n" + "\n".join(lines) + "\n"
        + protocols_section(runs) + bases_section(runs) + environments_section(runs))


def protocols_section(runs: list[dict[str, Any]]) -> str:
    """Which protocol produced each run's last-round eval numbers (annotator / judge prompts and their hash,
    judge model, LC formula) and whether they are leaderboard numbers."""
    from tapir_exp.eval.protocol import describe

    lines = []
    for r in runs:
        for suite, line in describe((r["rounds"][-1].get("eval") or {}) if r["rounds"] else {}).items():
            lines.append(f"- {r['label']} {suite}: {line}")
    return "\n## Evaluation protocols\n\n" + "\n".join(lines) + "\n" if lines else ""


def bases_section(runs: list[dict[str, Any]]) -> str:
    """The pre-trained skills bases the runs started from (``round_0/student_init`` with a ``pretrain.json``):
    bases of one key built on two machines differ, and every setting of a grid moves with its base, so two grids
    are comparable setting by setting only when this table shows the same weights (docs/skills_world.md)."""
    import hashlib

    from tapir_exp.skills.base import base_name, read_record

    seen: dict[str, list[Any]] = {}
    for r in runs:
        init = Path(r["run"]) / "round_0" / "student_init"
        record, weights = init / "pretrain.json", init / "model.safetensors"
        if not (record.is_file() and weights.is_file()):
            continue
        key, doc = read_record(record)
        sha = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        losses = doc.get("losses") or [None]
        seen.setdefault(sha, [base_name(key), losses[-1], set()])[2].add(r["label"])
    if not seen:
        return ""
    rows = [f"| {sha} | {len(labels)} | {name} | {loss} |" for sha, (name, loss, labels) in sorted(seen.items())]
    return ("\n## Bases\n\nThe pre-trained student every run started from (`round_0/student_init`). One key "
            "built on two machines gives two bases, and a grid's settings all move with theirs: compare settings "
            "across grids only between runs of one base.\n\n| weights sha256 | runs | key | last pre-training "
            "loss |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")


def environments_section(runs: list[dict[str, Any]]) -> str:
    """The machines and software the runs' rounds were computed in (tapir_exp.environment), one row each:
    bytewise equal results can only be expected between runs of one row; across rows, only statistically."""
    seen: dict[str, dict[str, Any]] = {}
    count: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        for rec in r["rounds"]:
            eid = rec.get("environment")
            if eid:
                seen.setdefault(eid, r["environments"].get(eid) or {})
                count[eid].add(r["label"])
    if not seen:
        return ""
    keys = ["cpu", "cpu_flags", "cores", "torch_threads", "python", "torch", "transformers", "packages",
            "packages_hash"]
    if any("kernel_env" in env for env in seen.values()):
        keys.insert(2, "kernel_env")
    fmt = lambda v: " ".join(v) if isinstance(v, list) else ("" if v is None else str(v))  # noqa: E731
    rows = [f"| {eid} | {len(count[eid])} | " + " | ".join(fmt(env.get(k)) for k in keys) + " |"
            for eid, env in sorted(seen.items())]
    return ("\n## Environments\n\nWhere the runs' rounds were computed (summary.json `environments`). Results are "
            "bytewise reproducible only within one environment; across environments compare intervals.\n\n"
            "| environment | runs | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 2) + "\n"
            + "\n".join(rows) + "\n")


def plot(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    made = []
    groups = by_setting(runs)
    for key, title in [("alpaca_eval/lc_win_rate", "LC win rate"), ("alpaca_eval/win_rate", "win rate"),
                       ("mt_bench/score", "MT-Bench score"), ("round/mean_mfd", "mean MFD"),
                       ("round/hard_fraction", "hard fraction"), ("train/final_loss", "final train loss")]:
        series = []
        for setting, group in groups.items():
            per_round: dict[int, list[float]] = defaultdict(list)
            for r in group:
                for pr in r["per_round"]:
                    if isinstance(pr.get(key), int | float):
                        per_round[pr["round"]].append(pr[key])
            stats = [(x, *mean_ci(v)) for x, v in sorted(per_round.items())]
            series.append((f"{setting} (n={len(group)})", stats))
        if not any(pts for _, pts in series):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, pts in series:
            if pts:  # seed means, 95 % intervals as error bars where there are two seeds or more
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0.0 for p in pts], marker="o",
                            capsize=3, label=label)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title + (" (mean over seeds, 95 % interval)" if any(len(g) > 1 for g in groups.values()) else ""))
        ax.legend(fontsize=7)
        path = out / f"{key.replace('/', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    return made


def skills_tables(runs: list[dict[str, Any]]) -> tuple[dict, dict, list[str]]:
    """Pool the runs of each setting: accuracy[setting][task][round] = (correct, total), and
    hard[setting][task][round] = (MFD-hard, judged)."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: [0, 0])))
    hard: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: [0, 0])))
    tasks: set[str] = set()
    for run in runs:
        for rec in run["rounds"]:
            ev, r = rec.get("eval") or {}, rec["round"]
            for key, n in ev.items():
                m = re.fullmatch(r"skills/n/(.+)", key)
                if m and m.group(1) != "all" and f"skills/acc/{m.group(1)}" in ev:
                    task = m.group(1)
                    tasks.add(task)
                    cell = acc[run["setting"]][task][r]
                    cell[0] += round(ev[f"skills/acc/{task}"] * n)
                    cell[1] += int(n)
            if "skills/n/all" in ev:
                cell = acc[run["setting"]]["all"][r]
                cell[0] += round(ev["skills/accuracy"] * ev["skills/n/all"])
                cell[1] += int(ev["skills/n/all"])
            for task, n in (rec.get("judged_by_task") or {}).items():
                cell = hard[run["setting"]][task][r]
                cell[0] += int((rec.get("mfd_hard_by_task") or {}).get(task, 0))
                cell[1] += int(n)
    return acc, hard, sorted(tasks) + (["all"] if tasks else [])


def skills_report(runs: list[dict[str, Any]], out: Path) -> tuple[str, list[Path]]:

    acc, hard, tasks = skills_tables(runs)
    if not tasks:
        return "", []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    seeds = defaultdict(int)
    for run in runs:
        seeds[run["setting"]] += 1
    settings = sorted(acc)
    lines = ["## Skills world: exact-match accuracy, last round (95 % Wilson interval, seeds pooled)", "",
             "| setting | seeds | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 2)]
    for st in settings:
        cells = []
        for task in tasks:
            per_round = acc[st].get(task) or {}
            if not per_round:
                cells.append("")
                continue
            k, n = per_round[max(per_round)]
            lo, hi = wilson(k, n)
            cells.append(f"{k / n:.2f} [{lo:.2f}, {hi:.2f}]")
        lines.append(f"| {st} | {seeds[st]} | " + " | ".join(cells) + " |")
    made = []
    for name, table, title, with_ci in (("skills_accuracy", acc, "exact-match accuracy", True),
                                        ("skills_hard_fraction", hard, "MFD hard fraction", False)):
        panels = [t for t in tasks if any(table[st].get(t) for st in settings)]
        if not panels:
            continue
        cols = min(4, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False, sharey=True)
        for ax, task in zip(axes.flat, panels, strict=False):
            for st in settings:
                pts = sorted((table[st].get(task) or {}).items())
                if not pts:
                    continue
                xs = [r for r, _ in pts]
                ys = [k / n if n else 0.0 for _, (k, n) in pts]
                if with_ci:
                    cis = [wilson(k, n) for _, (k, n) in pts]
                    err = [[y - lo for y, (lo, _) in zip(ys, cis, strict=True)],
                           [hi - y for y, (_, hi) in zip(ys, cis, strict=True)]]
                    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=st)
                else:
                    ax.plot(xs, ys, marker="o", label=st)
            ax.set_title(task, fontsize=9)
            ax.set_xlabel("round", fontsize=8)
            ax.set_ylim(-0.05, 1.05)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7)
        fig.suptitle(f"skills world: {title} per task" + (" (95 % Wilson, seeds pooled)" if with_ci else ""))
        fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 3), 1, 0.95))
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    return "\n".join(lines) + "\n", made


def environment_ids(runs: list[dict[str, Any]]) -> set[str]:
    return {rec["environment"] for r in runs for rec in r["rounds"] if rec.get("environment")}


def replication_section(runs: list[dict[str, Any]], outcomes: dict, dirs: list[str], against: list[str]) -> str:
    """The skills world's intervals and effects of this grid beside those of ``against`` (issue 19, item 6):
    run or sweep directories, or report directories that hold a ``skills_outcomes.csv`` (a committed report
    of a grid whose outputs are on another machine)."""
    from tapir_exp.skills.compare import (
        OUTCOMES_CSV,
        by_position,
        outcomes_by_setting,
        read_outcomes,
        replication,
        replication_markdown,
    )

    files, run_dirs = [], []
    for d in against:
        if (Path(d) / OUTCOMES_CSV).is_file():
            files.append(Path(d) / OUTCOMES_CSV)
        else:
            run_dirs.append(d)
    others = [load(r) for r in find_runs(run_dirs)] if run_dirs else []
    name_settings_by_difference(others)
    there, there_envs = outcomes_by_setting(others), environment_ids(others)
    if files:  # items are paired by position within their cell: key both sides so
        outcomes, there = by_position(outcomes), by_position(there)
        for f in files:
            read, envs = read_outcomes(f)
            for setting, seeds in read.items():
                there.setdefault(setting, {}).update(seeds)
            there_envs |= envs
    md = replication_markdown(replication(outcomes, there), ", ".join(dirs), ", ".join(against))
    if not md:
        return ""
    here = environment_ids(runs)
    shared = "; **both grids have runs of one environment**, whose results should be bytewise equal" if here & there_envs else ""
    return md + (f"- Environments here: {', '.join(sorted(here)) or 'not recorded'}; there: "
                 f"{', '.join(sorted(there_envs)) or 'not recorded'}{shared}.\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tapir-report", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="run directories or sweep directories (searched recursively)")
    ap.add_argument("--out", default="report", help="output directory (default: ./report)")
    ap.add_argument("--against", nargs="+", metavar="DIR",
                    help="another grid of the same settings (e.g. run on another machine): its run or sweep "
                         "directories, or a report directory with skills_outcomes.csv; the skills world's "
                         "intervals and effects side by side")
    a = ap.parse_args(argv)
    runs = [load(r) for r in find_runs(a.dirs)]
    name_settings_by_difference(runs)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(runs, out)
    pngs = plot(runs, out)
    skills_md, skills_pngs = skills_report(runs, out)
    from tapir_exp.skills.compare import (
        OUTCOMES_CSV,
        WARMUP,
        differences,
        differences_markdown,
        environments_by_setting,
        outcomes_by_setting,
        warmup_target,
        warmup_target_markdown,
        write_outcomes,
    )

    # paired differences: from full TAPIR (the pre-registered analysis), then from the warm-up student and
    # from plain distillation on the whole pool (issue 19, item 3); the per-item outcomes are read once
    outcomes = outcomes_by_setting(runs)
    if outcomes:  # every answer's correctness, so that a grid run elsewhere can be paired with this one
        write_outcomes(outcomes, out / OUTCOMES_CSV, environments_by_setting(runs))
    for reference in ("skills_tapir", WARMUP, "skills_plain_distill"):
        diff_md = differences_markdown(differences(runs, reference, outcomes), reference)
        if diff_md:
            skills_md += ("\n" if skills_md else "") + diff_md
    # the warm-up student against issue 19's item 2 (the check its "Checked by" names), per seed and pooled
    target_md = warmup_target_markdown(warmup_target(outcomes))
    if target_md:
        skills_md += ("\n" if skills_md else "") + target_md
    if a.against:
        replicated = replication_section(runs, outcomes, a.dirs, a.against) if outcomes else ""
        if not replicated:  # said, not silently skipped: the comparison needs the per-item skills outcomes
            print("tapir-report: --against compares skills-world grids (per-item skills eval outputs on both "
                  "sides); none to compare here", file=sys.stderr)
        skills_md += ("\n" if skills_md and replicated else "") + replicated
    if skills_md:
        with open(out / "report.md", "a") as fh:
            fh.write("\n" + skills_md)
    pngs += skills_pngs
    print((out / "report.md").read_text())
    print(f"tapir-report: {len(runs)} run(s); wrote {out}/report.md, report.csv and {len(pngs)} plot(s)")
