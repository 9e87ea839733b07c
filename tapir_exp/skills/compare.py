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

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from tapir_exp.errors import DataError
from tapir_exp.stats import paired_difference

WARMUP = "warm-up (round 0)"


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
            raise DataError(path, n, None, f"expected a JSON object with task, difficulty, instruction, correct ({e})") from e
    return out


def _seed(run: dict[str, Any]) -> str:
    m = re.search(r"(?:^|[,/])seed=([^,/]+)", run["label"])
    return m.group(1) if m else "default"


def _matches(setting: str, experiment: str) -> bool:
    return re.search(rf"(?:^|[/,])experiment={re.escape(experiment)}(?:,|$)", setting) is not None


def outcomes_by_setting(runs: list[dict[str, Any]],
                        warmup_from: str = "skills_tapir") -> dict[str, dict[str, dict]]:
    """{setting: {seed: outcomes of the run's last round}}, plus WARMUP: round 0 of the ``warmup_from`` runs
    (every setting of a seed starts from that student). Runs without their per-item eval outputs
    (``skills_outputs.jsonl``) are left out."""
    def has(r: dict[str, Any], k: int) -> bool:
        return (Path(r["run"]) / f"round_{k}" / "eval" / "skills_outputs.jsonl").is_file()

    by_setting: dict[str, dict[str, dict]] = {}
    for r in runs:
        if not r["rounds"]:
            continue
        last = max(x["round"] for x in r["rounds"])
        if has(r, last):
            by_setting.setdefault(r["setting"], {})[_seed(r)] = outcomes(r["run"], last)
        if _matches(r["setting"], warmup_from) and has(r, 0):
            by_setting.setdefault(WARMUP, {})[_seed(r)] = outcomes(r["run"], 0)
    return by_setting


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
