"""The TAPIR round loop. Which step runs when, with what inputs; no step logic lives here.

    seed pool -> teacher answers -> task labels -> warm-up training -> student_0
    for r in 1..R:
        student_{r-1} answers the pool -> judge both orders -> MFD -> hard / easy (or random, ablation)
        -> expand hard seeds per task (optionally verified hard by the student and the judge)
        -> mix (alpha_r, size_r, balanced to task ratios)
        -> refine in task style -> D_r -> train student_{r-1} on D_r -> student_r -> eval -> log

Every step goes through the RunStore: its artifact is loaded instead of recomputed when its signature
(step config + input artifact hashes) is unchanged, and oracle calls go through the persistent cache, so
re-running a finished or killed command continues where it stopped.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from tapir_exp.config import to_container
from tapir_exp.data import load_pool
from tapir_exp.distributed import launch_rank
from tapir_exp.export import export_round
from tapir_exp.records import Example, fresh, records_hash
from tapir_exp.steps import balance, classify, curriculum, expand, judge, refine, respond
from tapir_exp.store import RunStore, StepResult, stable_hash
from tapir_exp.summary import RunSummary, print_round

log = logging.getLogger("tapir")

def role_signature(oracle_cfg: DictConfig, role: str) -> dict[str, Any]:
    """What of the oracle config changes a role's answers: its sampling keys and its backend (no secrets,
    no limits or cache settings, which change speed and not results)."""
    role_cfg = to_container(oracle_cfg.roles[role])
    backend = to_container(oracle_cfg.backends[role_cfg["backend"]]) or {}
    backend = {k: v for k, v in backend.items() if k not in ("api_key", "organization", "cache_dir", "batch_size", "device")}
    return {"role": role_cfg, "backend": backend}


class Pipeline:
    def __init__(self, cfg: DictConfig, run_dir: Path, tracker: Any):
        self.cfg, self.run_dir, self.tracker = cfg, Path(run_dir), tracker
        # In a multi-process job only rank 0 computes steps; the others follow the store and join training.
        rank = launch_rank()[0]
        self.leader = rank == 0
        self.store = RunStore(run_dir, rank=rank)
        self.seed = int(cfg.seed)
        self.steps = cfg.steps
        self.budget = float(cfg.steps.failure_budget)
        ratios = to_container(cfg.tasks.ratios) if cfg.tasks.get("ratios") is not None else None
        # Task ratios reach the mix and the expansion counts only while balancing is on (ablation no_balance:
        # no ratios anywhere).
        self.ratios = ratios if cfg.steps.balance.enabled else None
        self.labels = list(cfg.tasks.labels)
        self.summary = RunSummary(self.run_dir, cfg, readonly=not self.leader)
        self._oracle = None
        self._generator = None

    # ------------------------------------------------------------------ lazily built components
    @property
    def oracle(self):
        """Built on first use, so a fully cached re-run never loads a model."""
        if self._oracle is None:
            from tapir_exp.llm import build_oracle

            self._oracle = build_oracle(self.cfg.oracle, self.run_dir)
        return self._oracle

    @property
    def generator(self):
        if self._generator is None:
            self._generator = _AfterOracleRelease(instantiate(self.cfg.generation), self.release_devices)
        return self._generator

    def release_devices(self) -> None:
        """An oracle engine on the GPUs (``oracle=vllm``) gives them back before the student trains or
        generates; the next oracle call builds it again."""
        if self._oracle is not None:
            self._oracle.release()

    def close(self) -> None:
        if self._oracle is not None:
            self._oracle.close()

    def oracle_usage(self) -> dict[str, Any]:
        return self._oracle.usage.summary() if self._oracle is not None else {}

    # ------------------------------------------------------------------ round 0
    def seed_pool(self) -> list[Example]:
        """The pool with teacher responses and task labels (round 0 artifacts)."""
        pool = load_pool(self.cfg.data, self.run_dir, self.seed)
        use_given = bool(self.cfg.data.get("use_given_responses", False))

        def answer():
            items = fresh(pool)
            have = [ex for ex in items if use_given and ex.output.strip()]
            need = [ex for ex in items if not (use_given and ex.output.strip())]
            answered, counts = respond.teacher_answers(need, self.oracle, step="teacher", round=0,
                                                       failure_budget=self.budget) if need else ([], {})
            for ex in have:
                ex.meta["teacher"] = {"given": True}
            keep = {ex.id for ex in have} | {ex.id for ex in answered}
            by_id = {ex.id: ex for ex in have + answered}
            return [by_id[ex.id] for ex in items if ex.id in keep], {"given": len(have), **counts}

        teacher = self.store.run_records_step(
            "teacher", 0, {"use_given": use_given, "oracle": role_signature(self.cfg.oracle, "teacher")},
            {"pool": records_hash(pool)}, answer)
        self._note(0, "teacher", teacher)

        c = self.steps.classify
        labelled = self.store.run_records_step(
            "classify", 0, {"classify": to_container(c), "labels": self.labels, "fallback": self.cfg.tasks.fallback,
                            "oracle": role_signature(self.cfg.oracle, "classifier")},
            {"teacher": teacher.entry.artifact_hash},
            lambda: classify.label_tasks(fresh(teacher.records), self.oracle, labels=self.labels,
                                         fallback=self.cfg.tasks.fallback, method=c.method,
                                         sample_size=int(c.sample_size), holdout_fraction=float(c.holdout_fraction),
                                         seed=self.seed, step="classify", round=0, failure_budget=self.budget))
        self._note(0, "classify", labelled)
        return labelled.records

    def warmup(self, pool: list[Example]) -> Path:
        """Initialise the student and fine-tune it on the warm-up set."""
        s = self.cfg.student
        corpus = [ex.prompt + "\n" + ex.output for ex in pool]
        init = self.store.run_dir_step(
            "init", 0, {"init": to_container(s.init), "chat_template": s.get("chat_template")},
            {"corpus": stable_hash(corpus)},
            lambda tmp: self._init_student(tmp, corpus), name="student_init")
        self._note(0, "init", init)

        size = self.steps.warmup.get("size")

        def pick():
            items = fresh(pool)
            if size is not None and size < len(items):
                items = random.Random(f"{self.seed}/warmup").sample(items, int(size))
            return items, {}

        data = self.store.run_records_step("warmup_data", 0, {"size": size, "seed": self.seed},
                                           {"pool": records_hash(pool)}, pick)
        return self.train(0, init.path, data, epochs=self.steps.warmup.get("epochs"))

    def _init_student(self, out_dir: Path, corpus: list[str]) -> dict[str, Any]:
        builder = instantiate(self.cfg.student.init)
        builder(out_dir, corpus=corpus, chat_template=self.cfg.student.get("chat_template"))
        return {"corpus": len(corpus)}

    # ------------------------------------------------------------------ shared steps
    def train(self, r: int, init_dir: Path, data: StepResult, epochs: int | None = None) -> Path:
        if epochs is None:  # a student may need its own number of passes (a random-init one needs many)
            epochs = self.cfg.student.get("max_epochs")
        work_dir = self.store.round_dir(r) / "train_work"
        summary_holder: dict[str, Any] = {}

        def fit(tmp: Path) -> dict[str, Any]:
            # imported here: a reused round imports neither torch nor Lightning
            from tapir_exp.student.live_metrics import LiveMetrics
            from tapir_exp.student.train import train_round

            self.release_devices()
            t = train_round(init_dir, [ex.messages(with_output=True) for ex in data.records], tmp,
                            student_cfg=self.cfg.student, trainer_cfg=self.cfg.trainer, work_dir=work_dir,
                            seed=self.seed + r, max_epochs=epochs,
                            callbacks=[LiveMetrics(self.tracker.log_train_step, r)])  # curves while it trains
            summary_holder["train"] = t
            return {"steps": t.steps, "tokens": t.tokens, "first_loss": t.first_loss, "final_loss": t.final_loss,
                    "losses": [round(x, 4) for x in t.losses], "padding_efficiency": t.padding_efficiency,
                    "resumed_from": t.resumed_from, **t.effective_batch, **t.data}

        trained = self.store.run_dir_step(
            "student", r, {"student": to_container(self.cfg.student), "trainer": to_container(self.cfg.trainer),
                           "epochs": epochs, "seed": self.seed + r},
            {"init": self._hash_of(init_dir), "data": data.entry.artifact_hash}, fit, collective=True)
        if not trained.reused:
            shutil.rmtree(work_dir, ignore_errors=True)  # mid-round checkpoints are no longer needed
        self._note(r, "student", trained)
        counts = trained.entry.counts
        self.summary.update(r, train={k: counts.get(k) for k in ("first_loss", "final_loss", "losses", "steps", "tokens", "world_size",
                                                               "examples_per_step", "tokens_per_step",
                                                               "answer_tail_cut", "dropped_prompt_too_long")})
        if not trained.reused and counts.get("losses"):
            self.tracker.log_series(f"train/loss_round_{r}", counts["losses"], step=r)
        return trained.path

    def evaluate(self, r: int, model_dir: Path) -> dict[str, float]:
        ev = self.cfg.eval
        if not ev.get("every_round", True) and r != curriculum.rounds_to_run(self.cfg.curriculum):
            return {}
        judged_suites = bool(ev.alpaca_eval.enabled or ev.mt_bench.enabled)
        skills = bool((ev.get("skills") or {}).get("enabled", False))
        if not (judged_suites or skills):
            return {}
        model_name = f"{self.cfg.name}/{self.cfg.run_name}/round_{r}"
        out_dir = self.store.round_dir(r) / "eval"

        def run_suites() -> dict[str, float]:
            metrics: dict[str, float] = {}
            if judged_suites:
                from tapir_exp.eval.runner import evaluate_round

                metrics.update(evaluate_round(self.cfg, model_dir, self.oracle, self.generator, out_dir, r, model_name))
            if skills:
                from tapir_exp.skills.evaluate import evaluate_skills

                metrics.update(evaluate_skills(self.cfg, model_dir, self.generator, out_dir, r))
            return metrics

        metrics, entry, reused = self.store.run_json_step(
            "eval", r, {"eval": to_container(ev), "generation": to_container(self.cfg.generation),
                        "oracle": role_signature(self.cfg.oracle, "eval_judge") if judged_suites else None},
            {"student": self._hash_of(model_dir)}, run_suites)
        self.summary.update(r, eval=metrics)
        self.summary.add_seconds(r, "eval", entry.seconds)
        return metrics

    # ------------------------------------------------------------------ one round
    def run_round(self, r: int, pool: list[Example], student_dir: Path) -> tuple[Path, list[Example]]:
        cfg, steps = self.cfg, self.steps
        pool_hash = records_hash(pool)

        answers = self.store.run_records_step(
            "student_answers", r, {"generation": to_container(cfg.generation)},
            {"pool": pool_hash, "student": self._hash_of(student_dir)},
            lambda: respond.student_answers(self._judged_subset(fresh(pool), r), self.generator, student_dir))
        self._note(r, "student_answers", answers)
        self.summary.update(r, student_answers=dict(answers.entry.counts))  # answered, truncated, prompts_shortened

        judged = self.store.run_records_step(
            "mfd", r, self._mfd_signature(), {"answers": answers.entry.artifact_hash},
            lambda: self._judge(fresh(answers.records), "mfd", r))
        self._note(r, "mfd", judged)

        hard, easy = self.select(judged, r)
        by_task_hard = Counter(ex.task or "Others" for ex in hard)  # what was selected as "hard"
        # what MFD finds hard, per task, whatever the selection (random selection ablates only the choice)
        judged_by_task = Counter(ex.task or "Others" for ex in judged.records)
        mfd_hard_by_task = Counter(ex.task or "Others" for ex in judged.records if ex.meta.get("hard"))

        e = steps.expand
        if e.enabled and hard:
            expanded = self.store.run_records_step(
                "expand", r, {"expand": to_container(e), "ratios": self.ratios, "seed": self.seed,
                              "oracle": [role_signature(cfg.oracle, "expander"), role_signature(cfg.oracle, "teacher")]},
                {"hard": records_hash(hard), "pool": pool_hash},
                lambda: self._expand(hard, pool, r))
            self._note(r, "expand", expanded)
            new_items = expanded.records
        else:
            new_items = []
        new_hard, new_easy, expanded_hard_fraction = self.check_expanded(new_items, student_dir, r)

        ratios = self.ratios
        hard_candidates = hard + new_hard
        easy = easy + new_easy
        alpha, size, mode = curriculum.round_plan(cfg.curriculum, r, len(hard_candidates) + len(easy))

        def mix():
            items, counts = curriculum.build_mix(
                fresh(hard_candidates), fresh(easy), alpha=alpha, size=size, mode=mode,
                resample=balance.resample, ratios=ratios, seed=self.seed, round=r)
            counts["task_mix_before"] = balance.distribution(hard_candidates + easy)
            counts["task_mix_after"] = balance.distribution(items)
            return items, counts

        mixed = self.store.run_records_step(
            "mix", r, {"curriculum": to_container(cfg.curriculum), "ratios": ratios, "seed": self.seed},
            {"hard": records_hash(hard_candidates), "easy": records_hash(easy)}, mix)
        self._note(r, "mix", mixed)

        rf = steps.refine
        dataset = self.store.run_records_step(
            "dataset", r, {"refine": to_container(rf), "oracle": role_signature(cfg.oracle, "refiner")},
            {"mix": mixed.entry.artifact_hash},
            lambda: refine.refine_responses(fresh(mixed.records), self.oracle, styles=to_container(rf.styles) or {},
                                            default_style=rf.get("default_style"), step="refine", round=r,
                                            failure_budget=self.budget)
            if rf.enabled else (fresh(mixed.records), {"refined": 0}))
        self._note(r, "dataset", dataset)

        mfds = [ex.meta.get("mfd") for ex in judged.records if ex.meta.get("mfd") is not None]
        self.summary.update(
            r, pool_size=len(pool), judged=len(judged.records), hard_count=len(hard),
            hard_fraction=round(len(hard) / max(1, len(judged.records)), 4), alpha=alpha, round_size=len(dataset.records),
            expanded=len(new_items), expanded_hard_fraction=expanded_hard_fraction, task_mix_before=mixed.entry.counts.get("task_mix_before"),
            task_mix_after=mixed.entry.counts.get("task_mix_after"), mfd=[round(x, 3) for x in mfds],
            hard_by_task=dict(by_task_hard), judged_by_task=dict(judged_by_task),
            mfd_hard_by_task=dict(mfd_hard_by_task), mean_mfd=round(sum(mfds) / len(mfds), 4) if mfds else None,
            refined=dataset.entry.counts.get("refined", 0),
            student_prompts_shortened=answers.entry.counts.get("prompts_shortened", 0))
        self._log_round_data(r, judged.records, dataset)

        new_student = self.train(r, student_dir, dataset)
        return new_student, pool + fresh(new_items)

    def _judged_subset(self, pool: list[Example], r: int) -> list[Example]:
        cap = self.steps.mfd.get("max_items")
        if cap is None or cap >= len(pool):
            return pool
        return random.Random(f"{self.seed}/judge/{r}").sample(pool, int(cap))

    def _mfd_signature(self) -> dict[str, Any]:
        m = self.steps.mfd
        return {"delta": m.delta, "compare": m.compare, "both_orders": m.both_orders, "scoring": m.scoring,
                "format": m.format, "justification_tokens": m.get("justification_tokens"),
                "oracle": role_signature(self.cfg.oracle, "judge")}

    def _judge(self, answered: list[Example], step: str, r: int):
        m = self.steps.mfd
        return judge.judge_mfd(answered, self.oracle, delta=float(m.delta), compare=str(m.compare),
                               both_orders=bool(m.both_orders), scoring=m.scoring, fmt=str(m.format),
                               justification_tokens=int(m.get("justification_tokens") or 0), step=step, round=r,
                               failure_budget=self.budget)

    def select(self, judged: StepResult, r: int) -> tuple[list[Example], list[Example]]:
        """Hard/easy split: by MFD (TAPIR), or a random subset of the same size (ablation). The chosen ids are
        an artifact of their own (``round_<r>/select.json``)."""
        selection = self.steps.mfd.selection
        if selection not in ("mfd", "random"):
            from tapir_exp.errors import ConfigError

            raise ConfigError("steps.mfd.selection", f"expected mfd or random, got {selection!r}")
        records = judged.records

        def choose() -> dict[str, Any]:
            hard = [ex.id for ex in records if ex.meta.get("hard")]
            if selection == "random":
                picked = random.Random(f"{self.seed}/random-select/{r}").sample(range(len(records)), len(hard))
                hard = [records[i].id for i in sorted(picked)]
            return {"selection": selection, "hard": hard}

        doc, entry, _ = self.store.run_json_step("select", r, {"selection": selection, "seed": self.seed},
                                                 {"mfd": judged.entry.artifact_hash}, choose)
        self.summary.add_seconds(r, "select", entry.seconds)
        ids = set(doc["hard"])
        return [ex for ex in records if ex.id in ids], [ex for ex in records if ex.id not in ids]

    def check_expanded(self, new_items: list[Example], student_dir: Path,
                       r: int) -> tuple[list[Example], list[Example], float | None]:
        """How hard the new instructions are for the current student (``steps.expand.verify`` / ``measure``):
        the student answers them and the judge scores them like the pool. With ``verify`` only those past
        delta join the hard part (the rest the easy part); otherwise all of them count as hard. Returns
        (hard part, easy part, fraction hard or None when not measured)."""
        e = self.steps.expand
        verify = bool(e.get("verify", False))
        if not new_items or not (verify or e.get("measure", False)):
            return new_items, [], None

        def answer_and_judge():
            answered, a_counts = respond.student_answers(fresh(new_items), self.generator, student_dir)
            judged, j_counts = self._judge(answered, "expand_mfd", r)
            return judged, {**a_counts, **j_counts}

        checked = self.store.run_records_step(
            "expand_mfd", r, {"generation": to_container(self.cfg.generation), "mfd": self._mfd_signature()},
            {"expanded": records_hash(new_items), "student": self._hash_of(student_dir)}, answer_and_judge)
        self._note(r, "expand_mfd", checked)
        hard = [ex for ex in checked.records if ex.meta.get("hard")]
        fraction = round(len(hard) / len(checked.records), 4)
        if not verify:
            return checked.records, [], fraction
        return hard, [ex for ex in checked.records if not ex.meta.get("hard")], fraction

    def _expand(self, hard: list[Example], pool: list[Example], r: int):
        e = self.steps.expand
        new, counts = expand.expand_hard_seeds(
            fresh(hard), pool, self.oracle, ratios=self.ratios, total=int(e.per_round), shots=int(e.shots),
            threshold=float(e.rouge_l_threshold), max_attempts_factor=int(e.max_attempts_factor), seed=self.seed,
            step="expand", round=r, failure_budget=self.budget)
        answered, t_counts = respond.teacher_answers(new, self.oracle, step="expand_teacher", round=r,
                                                     failure_budget=self.budget) if new else ([], {})
        counts["teacher_answered"] = len(answered)
        return answered, counts

    # ------------------------------------------------------------------ bookkeeping
    def _hash_of(self, path: Path) -> str:
        """The recorded hash of an artifact this run produced (no re-hashing of multi-GB checkpoints)."""
        return self.store.hash_of(path)

    def _note(self, r: int, step: str, result: StepResult) -> None:
        self.summary.add_seconds(r, step, result.entry.seconds)
        if result.reused and self.leader:  # a follower "reuses" every step: that is how it follows
            log.info("round %d %s: reused (%s)", r, step, result.entry.artifact)

    def _log_round_data(self, r: int, judged: list[Example], dataset: StepResult) -> None:
        mfds = [ex.meta["mfd"] for ex in judged if ex.meta.get("mfd") is not None]
        if mfds:
            self.tracker.log_histogram("mfd/distribution", mfds, step=r)
        rows = []
        for ex in judged[:20]:
            j = ex.meta.get("judge", {})
            rows.append([ex.id, ex.instruction[:300], ex.task, ex.output[:300], ex.meta.get("student", "")[:300],
                         j.get("teacher"), j.get("student"), ex.meta.get("mfd"), bool(ex.meta.get("hard"))])
        self.tracker.log_table("samples", ["id", "instruction", "task", "teacher", "student", "teacher_score",
                                           "student_score", "mfd", "hard"], rows, step=r)
        self.tracker.log_artifact(dataset.path, f"dataset_round_{r}", "dataset", step=r)

    def finish_round(self, r: int, t0: float) -> None:
        self.summary.update(r, oracle=usage_for_round(self.oracle_usage(), r), wall_seconds=round(time.time() - t0, 1))
        self.summary.save()
        self.tracker.log_metrics(self.summary.flat_metrics(r), step=r)
        if self.leader:
            export_round(self.store.round_dir(r))  # SFT set + preference pairs for LLaMA-Factory / TRL
            print_round(self.summary.round(r))


def usage_for_round(usage: dict[str, Any], r: int) -> dict[str, Any]:
    by_round = usage.get("by_round") or {}
    return dict(by_round.get(str(r)) or by_round.get(r) or {})


def run_pipeline(cfg: DictConfig, run_dir: Path, tracker: Any) -> dict[str, Any]:
    """Warm-up, then R curriculum rounds; returns the last round's metrics (``objective`` for sweepers)."""
    p = Pipeline(cfg, run_dir, tracker)
    try:
        t0 = time.time()
        pool = p.seed_pool()
        student = p.warmup(pool)
        p.evaluate(0, student)
        p.finish_round(0, t0)
        rounds = curriculum.rounds_to_run(cfg.curriculum)
        for r in range(1, rounds + 1):
            t0 = time.time()
            student, pool = p.run_round(r, pool, student)
            p.evaluate(r, student)
            p.finish_round(r, t0)
        if p.leader:
            _link_final(student, p.store.root / "final_student")
        metrics = p.summary.flat_metrics(rounds)
        objective_key = cfg.get("objective", "alpaca_eval/lc_win_rate")
        print(f"tapir: done. Run directory: {run_dir}  (final student: {student})")
        return {"metrics": metrics, "objective": metrics.get(objective_key), "run_dir": str(run_dir)}
    finally:
        p.summary.save()
        p.close()


def _link_final(student: Path, final: Path) -> None:
    """``final_student`` points at the last round's checkpoint (a symlink; no copy of the weights)."""
    if final.is_symlink() or final.exists():
        final.unlink()
    final.symlink_to(student.relative_to(final.parent), target_is_directory=True)


def plan(cfg: DictConfig) -> dict[str, Any]:
    from tapir_exp.plan import estimate

    return estimate(cfg)


__all__ = ["run_pipeline", "plan", "Pipeline"]


class _AfterOracleRelease:
    """The configured generator, called only after the oracle has released its devices."""

    def __init__(self, generator: Any, release: Any):
        self.inner, self.release = generator, release

    def generate(self, model_dir: Any, conversations: list[list[dict[str, str]]]) -> list[Any]:
        self.release()
        return self.inner.generate(model_dir, conversations)
