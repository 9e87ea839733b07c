"""Paired differences between skills-world settings (the pre-registered analysis of docs/skills_world.md).

Every setting is compared with a reference on the same seeds and the same held-out items: for a seed s and an
eval item i, d = correct(setting, s, i) - correct(reference, s, i) in {-1, 0, 1}. The reported difference is
the mean of d over all (seed, item) pairs of a task family (or of all families), with the 95 % interval
mean +- 1.96 * sd(d) / sqrt(n) (the paired normal interval; sd with n - 1). The warm-up student (round 0 of
the TAPIR runs, which every setting of a seed shares) is a setting like the others. The pre-registered
reference is full TAPIR; ``tapir-report`` also compares with the warm-up student and with plain distillation
(issue 19, item 3).
Inputs are the runs' ``round_R/eval/skills_outputs.jsonl``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tapir_exp.errors import DataError
from tapir_exp.stats import paired_difference, wilson

WARMUP = "warm-up (round 0)"
OUTCOMES_CSV = "skills_outcomes.csv"  # written by tapir-report beside report.md; read by --against


def outcomes(run_dir: str | Path, rnd: int) -> dict[tuple[str, int, str], bool]:
    """(task, difficulty, instruction) -> correct, from one run's eval of one round."""
    path = Path(run_dir) / f"round_{rnd}" / "eval" / "skills_outputs.jsonl"
    if not path.is_file():
        raise DataError(path, None, None, "missing: the skills eval of this round did not run")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            out[(r["task"], int(r["difficulty"]), r["instruction"])] = bool(r["correct"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(path, f"line {n}", None, f"expected a JSON object with task, difficulty, instruction, correct ({e})") from e
    return out


def _seed(run: dict[str, Any]) -> str:
    # the run's config first: a long run name is cut and hashed (config.run_name_from_overrides) and may no
    # longer hold seed=..., which made every seed of a setting one (the last read won)
    if run.get("seed") is not None:
        return str(run["seed"])
    m = re.search(r"(?:^|[,/])seed=([^,/]+)", run["label"])
    return m.group(1) if m else "default"


def _matches(setting: str, experiment: str) -> bool:
    return re.search(rf"(?:^|[/,])experiment={re.escape(experiment)}(?:,|$)", setting) is not None


def _rows(runs: list[dict[str, Any]], warmup_from: str) -> Iterator[tuple[str, str, dict[str, Any], int]]:
    """(setting, seed, run, round) of every row a grid's outcomes have: each run's last round under its setting,
    and round 0 of the ``warmup_from`` runs under WARMUP (every setting of a seed starts from that student)."""
    for r in runs:
        if not r["rounds"]:
            continue
        seed = _seed(r)
        yield r["setting"], seed, r, max(x["round"] for x in r["rounds"])
        if _matches(r["setting"], warmup_from):
            yield WARMUP, seed, r, 0


def outcomes_by_setting(runs: list[dict[str, Any]],
                        warmup_from: str = "skills_tapir") -> dict[str, dict[str, dict]]:
    """{setting: {seed: outcomes of the run's last round}}, plus WARMUP (``_rows``). Runs without their per-item
    eval outputs (``skills_outputs.jsonl``) are left out."""
    by_setting: dict[str, dict[str, dict]] = {}
    for setting, seed, r, k in _rows(runs, warmup_from):
        if (Path(r["run"]) / f"round_{k}" / "eval" / "skills_outputs.jsonl").is_file():
            by_setting.setdefault(setting, {})[seed] = outcomes(r["run"], k)
    return by_setting


def environments_by_setting(runs: list[dict[str, Any]],
                             warmup_from: str = "skills_tapir") -> dict[tuple[str, str], str]:
    """{(setting, seed): the environment ids of the rounds up to the one its outcomes come from}, keyed like
    ``outcomes_by_setting``."""
    return {(setting, seed): " ".join(sorted({x["environment"] for x in r["rounds"]
                                              if x.get("environment") and x["round"] <= k}))
            for setting, seed, r, k in _rows(runs, warmup_from)}


def differences(runs: list[dict[str, Any]], reference: str = "skills_tapir",
                by_setting: dict[str, dict[str, dict]] | None = None) -> dict[str, dict[str, tuple]]:
    """{setting: {task family or "all": (mean, low, high, n)}} of setting minus reference, paired on (seed,
    item), last round of each run; the warm-up student (WARMUP, round 0 of the TAPIR runs) is a setting too.
    ``reference`` is an experiment name (``skills_tapir``, ``skills_plain_distill``) or WARMUP; ``by_setting``:
    the runs' ``outcomes_by_setting``, when the caller compares with several references (read once)."""
    if by_setting is None:
        by_setting = outcomes_by_setting(runs)
    refs = [s for s in by_setting if s == reference or (s != WARMUP and _matches(s, reference))]
    if len(refs) != 1:
        return {}  # no reference runs (or an ambiguous name): nothing to pair with
    ref = by_setting[refs[0]]
    result: dict[str, dict[str, tuple]] = {}
    for setting, by_seed in by_setting.items():
        if setting == refs[0]:
            continue
        pairs: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for seed, got in sorted(by_seed.items()):
            base = ref.get(seed)
            if base is None:
                continue  # a seed the reference does not have: no pair
            for key in sorted(set(got) & set(base)):
                for group in (key[0], "all"):
                    pairs[group][0].append(got[key])
                    pairs[group][1].append(base[key])
        if pairs:
            result[setting] = {g: paired_difference(a, b) for g, (a, b) in sorted(pairs.items())}
    return result


def differences_markdown(diffs: dict[str, dict[str, tuple]], reference: str = "skills_tapir") -> str:
    if not diffs:
        return ""
    groups = sorted({g for d in diffs.values() for g in d if g != "all"}) + ["all"]
    what = "the warm-up student" if reference == WARMUP else reference
    lines = [f"## Skills world: difference from {what} (paired over seeds and eval items, 95 % interval)", "",
             f"Accuracy of the setting minus that of {what} on the same seeds and items; last round (the "
             "warm-up row: round 0 of the skills_tapir runs, the student every setting of a seed starts "
             "from).", "",
             "| setting | pairs | " + " | ".join(groups) + " |", "|" + "---|" * (len(groups) + 2)]
    for setting in sorted(diffs, key=lambda s: (s != WARMUP, s)):
        d = diffs[setting]
        cells = [f"{d[g][0]:+.3f} [{d[g][1]:+.3f}, {d[g][2]:+.3f}]" if g in d else "" for g in groups]
        lines.append(f"| {setting} | {d['all'][3] if 'all' in d else 0} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Issue 19, item 2 ("a student with room to move"), as pre-registered in docs/skills_world.md: after the
# warm-up, overall accuracy in [25 %, 60 %], every family above 5 % at difficulty 1 and below 90 % at 3.
OVERALL_RANGE = (0.25, 0.60)
D1_ABOVE, D3_BELOW = 0.05, 0.90


def _target(cell: str) -> tuple[str, Any, Any]:
    """Item 2's target for a cell ("overall", "<family> d1" or "<family> d3"): its text, whether a proportion
    meets it, and whether an interval (low, high) reaches it."""
    if cell == "overall":
        lo, hi = OVERALL_RANGE
        return f"{lo * 100:.0f}–{hi * 100:.0f} %", lambda p: lo <= p <= hi, lambda a, b: b >= lo and a <= hi
    if cell.endswith(" d1"):
        return f"> {D1_ABOVE * 100:.0f} %", lambda p: p > D1_ABOVE, lambda a, b: b > D1_ABOVE
    return f"< {D3_BELOW * 100:.0f} %", lambda p: p < D3_BELOW, lambda a, b: a < D3_BELOW


def warmup_target(by_setting: dict[str, dict[str, dict]]) -> dict[str, dict[str, tuple[int, int]]]:
    """{cell: {seed or "pooled": (correct, answered)}} of the warm-up student (WARMUP of
    ``outcomes_by_setting``) for item 2's cells: overall, and every family at difficulties 1 and 3."""
    by_seed = by_setting.get(WARMUP, {})
    table: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for seed, got in by_seed.items():
        for (task, difficulty, _), ok in got.items():
            cells = ["overall"] + ([f"{task} d{difficulty}"] if difficulty in (1, 3) else [])
            for cell in cells:
                for column in (seed, "pooled"):
                    table[cell][column][0] += ok
                    table[cell][column][1] += 1
    return {cell: {col: (k, n) for col, (k, n) in cols.items()} for cell, cols in table.items()}


def warmup_target_markdown(table: dict[str, dict[str, tuple[int, int]]]) -> str:
    """The warm-up student against item 2's target, per seed and pooled, with 95 % Wilson intervals. A cell
    whose point estimate misses the target is marked ✗; the lines below count those, and those whose whole
    interval misses it too (a per-seed cell holds few answers: one of 20 is 0.05, its interval up to 0.24)."""
    if not table:
        return ""
    def numeric_first(seed: str) -> tuple:
        number = seed.lstrip("-").isdigit()
        return (not number, int(seed) if number else 0, seed)

    seeds = sorted({c for cols in table.values() for c in cols if c != "pooled"}, key=numeric_first)
    columns = seeds + ["pooled"]
    cells = ["overall"] + sorted(c for c in table if c != "overall")
    lines = ["## Skills world: the warm-up student against issue 19's target (item 2)", "",
             "Round 0 of the skills_tapir runs (the student every setting of a seed starts from): exact-match "
             "accuracy and its 95 % Wilson interval, per seed and pooled over the seeds; ✗: the point estimate "
             "misses the target.", "",
             "| cell | target | " + " | ".join(c if c == "pooled" else f"seed {c}" for c in columns) + " |",
             "|" + "---|" * (len(columns) + 2)]
    missed = {"seed": [0, 0, 0], "pooled": [0, 0, 0]}  # cells, point estimate misses, interval misses too
    for cell in cells:
        text, inside, reaches = _target(cell)
        row = []
        for col in columns:
            if col not in table[cell]:
                row.append("")
                continue
            k, n = table[cell][col]
            lo, hi = wilson(k, n)
            ok = inside(k / n)
            tally = missed["pooled" if col == "pooled" else "seed"]
            tally[0] += 1
            if not ok:
                tally[1] += 1
                tally[2] += not reaches(lo, hi)
            row.append(f"{k / n:.3f} [{lo:.3f}, {hi:.3f}]" + ("" if ok else " ✗"))
        lines.append(f"| {cell} | {text} | " + " | ".join(row) + " |")
    lines.append("")
    for what, (total, point, interval) in (("per seed", missed["seed"]), ("pooled", missed["pooled"])):
        lines.append(f"- {what}: {point} of {total} cells miss the target by their point estimate, "
                     f"{interval} by their whole interval.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- replication
# Issue 19, item 6: on another machine (another CPU's kernels, other package versions) every run is still
# deterministic but its floats differ, so its numbers do not repeat bytewise; what must repeat is each
# setting's interval and each effect's sign. ``tapir-report A --against B`` sets grid B beside grid A.


def pooled_accuracy(by_setting: dict[str, dict[str, dict]]) -> dict[str, tuple[int, int]]:
    """{setting: (correct, answered)} over every seed of the setting (``outcomes_by_setting``)."""
    return {s: (sum(sum(o.values()) for o in seeds.values()), sum(len(o) for o in seeds.values()))
            for s, seeds in by_setting.items()}


def _differing_answers(here: dict[str, dict], there: dict[str, dict]) -> tuple[int, int]:
    """(items whose correctness differs, items compared) over the seeds and items both grids have."""
    differ = total = 0
    for seed in set(here) & set(there):
        for key in set(here[seed]) & set(there[seed]):
            total += 1
            differ += here[seed][key] != there[seed][key]
    return differ, total


def _effect(d: tuple) -> int:
    """+1 / -1: the paired interval lies above / below 0; 0: it contains 0."""
    return 1 if d[1] > 0 else (-1 if d[2] < 0 else 0)


def replication(here: dict[str, dict[str, dict]], there: dict[str, dict[str, dict]],
                reference: str = "skills_tapir") -> dict[str, Any]:
    """Grid ``there`` against grid ``here`` (each ``outcomes_by_setting``): per setting both pooled accuracies
    and whether their 95 % Wilson intervals overlap, the answers whose correctness differs, both paired
    differences from ``reference`` with their effects; and, over every (setting, family) cell of the paired
    differences, how many effects of one grid the other repeats with the same sign."""
    acc_here, acc_there = pooled_accuracy(here), pooled_accuracy(there)
    diff_here, diff_there = differences([], reference, here), differences([], reference, there)
    settings = []
    for s in sorted(set(here) | set(there), key=lambda s: (s != WARMUP, s)):
        row: dict[str, Any] = {"setting": s, "here": acc_here.get(s), "there": acc_there.get(s)}
        if row["here"] and row["there"]:
            (lo1, hi1), (lo2, hi2) = wilson(*row["here"]), wilson(*row["there"])
            row["overlap"] = lo1 <= hi2 and lo2 <= hi1
            row["differing"] = _differing_answers(here[s], there[s])
        row["diff_here"] = diff_here.get(s, {}).get("all")
        row["diff_there"] = diff_there.get(s, {}).get("all")
        settings.append(row)
    cells = {"here": [0, 0, 0], "there": [0, 0, 0]}  # effects, repeated with the same sign, with the other sign
    for s in set(diff_here) & set(diff_there):
        for group in set(diff_here[s]) & set(diff_there[s]):
            a, b = _effect(diff_here[s][group]), _effect(diff_there[s][group])
            for side, mine, other in (("here", a, b), ("there", b, a)):
                if mine:
                    cells[side][0] += 1
                    cells[side][1] += other == mine
                    cells[side][2] += other == -mine
    return {"reference": reference, "settings": settings, "cells": cells}


def replication_markdown(rep: dict[str, Any], here: str, there: str) -> str:
    rows = rep["settings"]
    if not any(r.get("overlap") is not None for r in rows):
        return ""
    acc = lambda kn: "" if not kn else "{:.3f} [{:.3f}, {:.3f}]".format(kn[0] / kn[1], *wilson(*kn))  # noqa: E731
    diff = lambda d: "" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" + (" *" if _effect(d) else "")  # noqa: E731
    ref = rep["reference"]
    lines = [f"## Skills world: replication against {there}", "",
             f"Here: {here}. There: {there}. Seeds pooled, last round (the warm-up row: round 0). Accuracy with "
             f"its 95 % Wilson interval; difference from {ref} paired over seeds and items (* : the interval "
             "excludes 0); answers that differ: items whose correctness differs between the two grids.", "",
             f"| setting | accuracy here | accuracy there | intervals overlap | answers that differ | − {ref} here "
             f"| − {ref} there | effect |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["diff_here"], r["diff_there"]
        if a is None or b is None:
            verdict = ""
        else:
            ea, eb = _effect(a), _effect(b)
            verdict = ("none in either" if not ea and not eb else "repeated" if ea == eb
                       else "opposite signs" if ea == -eb and ea else "here only" if ea else "there only")
        overlap = {True: "yes", False: "**no**", None: ""}[r.get("overlap")]
        differing = "{} of {}".format(*r["differing"]) if r.get("differing") else ""
        lines.append(f"| {r['setting']} | {acc(r['here'])} | {acc(r['there'])} | {overlap} | {differing} | "
                     f"{diff(a)} | {diff(b)} | {verdict} |")
    compared = [r for r in rows if r.get("overlap") is not None]
    lines += ["", f"- {sum(r['overlap'] for r in compared)} of {len(compared)} settings' accuracy intervals "
              "overlap."]
    for side in ("here", "there"):
        n, same, flipped = rep["cells"][side]
        lines.append(f"- {n} paired-difference cells (settings × task families and overall) show an effect {side}; "
                     f"{same} of them show it with the same sign in the other grid, {flipped} with the other sign.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- per-item outcomes as a file
# A grid's outputs stay on the machine that ran it; its report goes into the repository. So that a grid run
# elsewhere can be set beside a committed one item by item (``tapir-report GRID --against REPORT_DIR``), the
# report holds every answer's correctness: one row per setting, seed and (task, difficulty) cell, the cell's
# items named by a hash of their instructions and their correctness as a 0/1 string in instruction order.
# (The eval items are drawn by the world's own seeded generator, not by float code, so both grids have the
# same cells; a cell whose items differ is not paired.)

FIELDS = ["setting", "seed", "environments", "task", "difficulty", "items", "correct"]


def _items_hash(instructions: list[str]) -> str:
    return hashlib.sha256("\n".join(instructions).encode()).hexdigest()[:12]


def _cells(got: dict[tuple[str, int, str], bool]) -> list[tuple[str, int, str, list[bool]]]:
    """(task, difficulty, hash of the cell's instructions, correctness in instruction order), cells sorted."""
    cells: dict[tuple[str, int], list[tuple[str, bool]]] = defaultdict(list)
    for (task, difficulty, instruction), ok in sorted(got.items()):
        cells[(task, difficulty)].append((instruction, ok))
    return [(task, difficulty, _items_hash([i for i, _ in items]), [ok for _, ok in items])
            for (task, difficulty), items in sorted(cells.items())]


def by_position(by_setting: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """The same outcomes keyed (task, difficulty, "<items hash>#<position>"), as ``read_outcomes`` keys them."""
    return {setting: {seed: {(task, difficulty, f"{h}#{n}"): ok
                             for task, difficulty, h, oks in _cells(got) for n, ok in enumerate(oks)}
                      for seed, got in seeds.items()}
            for setting, seeds in by_setting.items()}


def write_outcomes(by_setting: dict[str, dict[str, dict]], path: str | Path,
                   environments: dict[tuple[str, str], str] | None = None) -> None:
    """``by_setting`` (``outcomes_by_setting``) as ``skills_outcomes.csv``; rows sorted, so the same grid
    writes the same bytes."""
    environments = environments or {}
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(FIELDS)
        for setting in sorted(by_setting, key=lambda s: (s != WARMUP, s)):
            for seed in sorted(by_setting[setting]):
                for task, difficulty, h, oks in _cells(by_setting[setting][seed]):
                    w.writerow([setting, seed, environments.get((setting, seed), ""), task, difficulty, h,
                                "".join("01"[ok] for ok in oks)])


def read_outcomes(path: str | Path) -> tuple[dict[str, dict[str, dict]], set[str]]:
    """``skills_outcomes.csv`` -> (outcomes keyed as by ``by_position``, the environment ids named in it)."""
    path = Path(path)
    by_setting: dict[str, dict[str, dict]] = {}
    envs: set[str] = set()
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != FIELDS:
            raise DataError(path, "line 1", None, f"expected the header {','.join(FIELDS)}")
        for n, row in enumerate(reader, 2):
            if None in row or any(row[f] is None for f in FIELDS):
                raise DataError(path, f"line {n}", None, f"expected {len(FIELDS)} fields ({','.join(FIELDS)})")
            try:
                difficulty = int(row["difficulty"])
            except ValueError:
                raise DataError(path, f"line {n}", "difficulty", f"expected an integer, got {row['difficulty']!r}") from None
            if not row["correct"] or set(row["correct"]) - {"0", "1"}:
                raise DataError(path, f"line {n}", "correct", "expected a non-empty string of 0 and 1")
            got = by_setting.setdefault(row["setting"], {}).setdefault(row["seed"], {})
            got.update({(row["task"], difficulty, f"{row['items']}#{i}"): c == "1"
                        for i, c in enumerate(row["correct"])})
            envs.update(row["environments"].split())
    return by_setting, envs
