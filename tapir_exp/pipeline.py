"""The TAPIR round loop. Which step runs when, with what inputs; no step logic lives here.

    seed pool -> teacher answers -> task labels -> warm-up training -> student_0
    for r in 1..R:
        student_{r-1} answers the pool -> judge both orders -> MFD -> hard / easy (or random, ablation)
        -> expand hard seeds per task (optionally verified hard by the student and the judge)
        -> mix (alpha_r, size_r, balanced to task ratios)
        -> refine in task style -> D_r -> train student_{r-1} on D_r -> student_r -> eval -> log

Every step goes through the RunStore: its artifact is loaded instead of recomputed when its signature
(step config + input artifact hashes) is unchanged, and oracle calls go through the persistent cache, so
re-running a finished or killed command continues where it stopped. Each step is one method that states its
config (what its signature holds), its inputs (hashes) and its computation, in that order; ``run`` and
``run_round`` are the list of them. ``tapir mode=plan`` runs this same loop dry (:mod:`tapir_exp.dry_run`).
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

from tapir_exp.config import naming_items, naming_tree, to_container
from tapir_exp.data import load_pool
from tapir_exp.distributed import launch_rank
from tapir_exp.eval.suites import enabled_suites, evaluate_suites
from tapir_exp.export import export_round
from tapir_exp.files import stable_hash
from tapir_exp.records import Example, fresh, records_hash
from tapir_exp.steps import balance, classify, curriculum, expand, judge, refine, respond
from tapir_exp.store import RunStore, StepResult
from tapir_exp.summary import RunSummary, print_round

log = logging.getLogger("tapir")

def role_signature(oracle_cfg: DictConfig, role: str) -> dict[str, Any]:
    """What of the oracle config changes a role's answers: its sampling keys and its backend, without the
    backend keys that do not name a run either (secrets, devices, batch sizes: ``config.names_run``)."""
    role_cfg = to_container(oracle_cfg.roles[role])
    backend = to_container(oracle_cfg.backends[role_cfg["backend"]]) or {}
    backend = naming_items(f"oracle.backends.{role_cfg['backend']}", backend)
    return {"role": role_cfg, "backend": backend}


def training_signature(cfg: DictConfig, epochs: int | None, seed: int) -> dict[str, Any]:
    """What of the config decides a round's training: the student and trainer configs with the number of passes
    the fit actually makes (``epochs``, else the student's, else ``trainer.max_epochs``) in place of the
    epoch keys it overrides. A warm-up with its own epochs (``steps.warmup.epochs``) therefore keeps its
    signature, and its shared student (``steps.warmup.share``), when only the rounds' epochs change."""
    student = naming_tree("student", to_container(cfg.student))
    trainer = to_container(cfg.trainer)
    if epochs is None:
        epochs = cfg.student.get("max_epochs")
    if epochs is None:
        epochs = trainer.get("max_epochs")
    student.pop("max_epochs", None)
    trainer.pop("max_epochs", None)
    return {"student": student, "trainer": trainer, "epochs": epochs, "seed": seed}


class Pipeline:
    def __init__(self, cfg: DictConfig, run_dir: Path, tracker: Any, rank: int | None = None):
        self.cfg, self.run_dir, self.tracker = cfg, Path(run_dir), tracker
        # In a multi-process job only rank 0 computes steps; the others follow the store and join training.
        rank = launch_rank()[0] if rank is None else rank
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
        self.share_warmup = bool(cfg.steps.warmup.get("share", False))  # steps.warmup.share
        self.share_generations = bool(cfg.get("share_generations", False))
        self._oracle = None
        self._generator = None

    # ------------------------------------------------------------------ lazily built components
    @property
    def oracle(self):
        """Built on first use, so a fully cached re-run never loads a model."""
        if self._oracle is None:
            self._oracle = self._build_oracle()
        return self._oracle

    @property
    def generator(self):
        if self._generator is None:
            self._generator = _AfterOracleRelease(self._build_generator(), self.release_devices)
            if self.share_generations:  # outside: a stored call releases no oracle devices
                from tapir_exp.student.shared_generations import SharedGenerations

                self._generator = SharedGenerations(
                    self._generator, Path(self.cfg.paths.cache_dir) / "generations",
                    naming_tree("generation", to_container(self.cfg.generation)), self._hash_of)
        return self._generator

    def _build_oracle(self) -> Any:
        from tapir_exp.llm import build_oracle

        return build_oracle(self.cfg.oracle, self.run_dir)

    def _build_generator(self) -> Any:
        return instantiate(self.cfg.generation)

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

    # ------------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Warm-up, then R curriculum rounds, each evaluated and recorded; returns the last student."""
        t0 = time.time()
        pool = self.seed_pool()
        student = self.warmup(pool)
        self.evaluate(0, student)
        self.finish_round(0, t0)
        for r in range(1, curriculum.rounds_to_run(self.cfg.curriculum) + 1):
            t0 = time.time()
            student, pool = self.run_round(r, pool, student)
            self.evaluate(r, student)
            self.finish_round(r, t0)
        return student

    def seed_pool(self) -> list[Example]:
        """The pool with teacher responses and task labels (round 0 artifacts)."""
        pool = load_pool(self.cfg.data, self.run_dir, self.seed)
        teacher = self.teacher(pool)
        return self.classify(teacher).records

    def warmup(self, pool: list[Example]) -> Path:
        """Initialise the student and fine-tune it on the warm-up set."""
        init = self.init_student(pool)
        data = self.warmup_data(pool)
        return self.train(0, init.path, data, epochs=self.steps.warmup.get("epochs"), shared=self.share_warmup)

    def run_round(self, r: int, pool: list[Example], student_dir: Path) -> tuple[Path, list[Example]]:
        """One TAPIR round: MFD finds what the student cannot yet do, expansion adds more of it, the curriculum
        mixes hard and easy, the refiner restyles the answers, and the student trains on the result."""
        pool_hash = records_hash(pool)  # two steps name the pool as input: hashed once (seconds at 52K)
        answers = self.student_answers(r, pool, pool_hash, student_dir)
        judged = self.mfd(r, answers)
        hard, easy = self.select(r, judged)
        new_items = self.expand(r, hard, pool, pool_hash)
        new_hard, new_easy, expanded_hard_fraction = self.check_expanded(r, new_items, student_dir)
        mixed, alpha = self.mix(r, hard + new_hard, easy + new_easy)
        dataset = self.refine(r, mixed)
        self.record_round(r, pool, answers, judged, hard, new_items, expanded_hard_fraction, mixed, alpha, dataset)
        new_student = self.train(r, student_dir, dataset)
        return new_student, pool + fresh(new_items)

    # ------------------------------------------------------------------ round 0 steps
    def teacher(self, pool: list[Example]) -> StepResult:
        """The teacher answers the pool (or the dataset's own responses are kept: ``data.use_given_responses``)."""
        use_given = bool(self.cfg.data.get("use_given_responses", False))
        config = {"use_given": use_given, "oracle": role_signature(self.cfg.oracle, "teacher")}
        inputs = {"pool": records_hash(pool)}

        def compute():
            items = fresh(pool)
            have = [ex for ex in items if use_given and ex.output.strip()]
            need = [ex for ex in items if not (use_given and ex.output.strip())]
            answered, counts = respond.teacher_answers(need, self.oracle, step="teacher", rnd=0,
                                                       failure_budget=self.budget) if need else ([], {})
            for ex in have:
                ex.meta["teacher"] = {"given": True}
            keep = {ex.id for ex in have} | {ex.id for ex in answered}
            by_id = {ex.id: ex for ex in have + answered}
            return [by_id[ex.id] for ex in items if ex.id in keep], {"given": len(have), **counts}

        return self._records_step("teacher", 0, config, inputs, compute)

    def classify(self, teacher: StepResult) -> StepResult:
        """Every instruction gets a task label (``steps.classify``)."""
        c, labels, fallback = self.steps.classify, self.labels, self.cfg.tasks.fallback
        config = {"classify": to_container(c), "labels": labels, "fallback": fallback,
                  "oracle": role_signature(self.cfg.oracle, "classifier")}
        inputs = {"teacher": teacher.entry.artifact_hash}

        def compute():
            return classify.label_tasks(fresh(teacher.records), self.oracle, labels=labels, fallback=fallback,
                                        method=c.method, sample_size=int(c.sample_size),
                                        holdout_fraction=float(c.holdout_fraction), seed=self.seed, step="classify",
                                        rnd=0, failure_budget=self.budget)

        return self._records_step("classify", 0, config, inputs, compute)

    def init_student(self, pool: list[Example]) -> StepResult:
        """The student before any training (``student.init``; its tokenizer may be fitted on the pool)."""
        s = self.cfg.student
        config = {"init": naming_tree("student.init", to_container(s.init)), "chat_template": s.get("chat_template")}
        corpus = [ex.prompt + "\n" + ex.output for ex in pool]
        inputs = {"corpus": stable_hash(corpus)}
        init = self.store.run_dir_step("init", 0, config, inputs, lambda tmp: self._init_student(tmp, corpus),
                                       name="student_init")
        self._note(0, "init", init)
        return init

    def warmup_data(self, pool: list[Example]) -> StepResult:
        """The warm-up set: the labelled pool, or a seeded sample of ``steps.warmup.size``."""
        size = self.steps.warmup.get("size")
        config = {"size": size, "seed": self.seed}
        inputs = {"pool": records_hash(pool)}

        def compute():
            items = fresh(pool)
            if size is not None and size < len(items):
                items = random.Random(f"{self.seed}/warmup").sample(items, int(size))
            return items, {}

        return self.store.run_records_step("warmup_data", 0, config, inputs, compute)

    def _init_student(self, out_dir: Path, corpus: list[str]) -> dict[str, Any]:
        builder = instantiate(self.cfg.student.init)
        builder(out_dir, corpus=corpus, chat_template=self.cfg.student.get("chat_template"))
        return {"corpus": len(corpus)}

    # ------------------------------------------------------------------ round steps
    def student_answers(self, r: int, pool: list[Example], pool_hash: str, student_dir: Path) -> StepResult:
        """The current student answers the pool (at most ``steps.mfd.max_items`` of it)."""
        config = {"generation": to_container(self.cfg.generation)}
        inputs = {"pool": pool_hash, "student": self._hash_of(student_dir)}
        answers = self._records_step(
            "student_answers", r, config, inputs,
            lambda: respond.student_answers(self._judged_subset(fresh(pool), r), self.generator, student_dir))
        self.summary.update(r, student_answers=dict(answers.entry.counts))  # answered, truncated, prompts_shortened
        return answers

    def mfd(self, r: int, answers: StepResult) -> StepResult:
        """The judge scores teacher and student answers; MFD past delta marks an item hard."""
        config = self._mfd_signature()
        inputs = {"answers": answers.entry.artifact_hash}
        return self._records_step("mfd", r, config, inputs, lambda: self._judge(fresh(answers.records), "mfd", r))

    def select(self, r: int, judged: StepResult) -> tuple[list[Example], list[Example]]:
        """Hard/easy split: by MFD (TAPIR), or a random subset of the same size (ablation). The chosen ids are
        an artifact of their own (``round_<r>/select.json``)."""
        selection = self.steps.mfd.selection
        if selection not in ("mfd", "random"):
            from tapir_exp.errors import ConfigError

            raise ConfigError("steps.mfd.selection", f"expected mfd or random, got {selection!r}")
        config = {"selection": selection, "seed": self.seed}
        records = judged.records
        inputs = {"mfd": judged.entry.artifact_hash}

        def choose() -> dict[str, Any]:
            hard = [ex.id for ex in records if ex.meta.get("hard")]
            if selection == "random":
                picked = random.Random(f"{self.seed}/random-select/{r}").sample(range(len(records)), len(hard))
                hard = [records[i].id for i in sorted(picked)]
            return {"selection": selection, "hard": hard}

        doc, entry, _ = self.store.run_json_step("select", r, config, inputs, choose)
        self.summary.add_seconds(r, "select", entry.seconds)
        ids = set(doc["hard"])
        return [ex for ex in records if ex.id in ids], [ex for ex in records if ex.id not in ids]

    def expand(self, r: int, hard: list[Example], pool: list[Example], pool_hash: str) -> list[Example]:
        """New instructions like the hard seeds of each task, answered by the teacher (none when
        ``steps.expand.enabled`` is off or nothing is hard)."""
        e = self.steps.expand
        if not (e.enabled and hard):
            return []
        config = {"expand": to_container(e), "ratios": self.ratios, "seed": self.seed,
                  "oracle": [role_signature(self.cfg.oracle, "expander"), role_signature(self.cfg.oracle, "teacher")]}
        inputs = {"hard": records_hash(hard), "pool": pool_hash}

        def compute():
            new, counts = expand.expand_hard_seeds(
                fresh(hard), pool, self.oracle, ratios=self.ratios, total=int(e.per_round), shots=int(e.shots),
                threshold=float(e.rouge_l_threshold), max_attempts_factor=int(e.max_attempts_factor),
                seed=self.seed, step="expand", rnd=r, failure_budget=self.budget)
            answered, _ = respond.teacher_answers(new, self.oracle, step="expand_teacher", rnd=r,
                                                  failure_budget=self.budget) if new else ([], {})
            counts["teacher_answered"] = len(answered)
            return answered, counts

        return self._records_step("expand", r, config, inputs, compute).records

    def check_expanded(self, r: int, new_items: list[Example],
                       student_dir: Path) -> tuple[list[Example], list[Example], float | None]:
        """How hard the new instructions are for the current student (``steps.expand.verify`` / ``measure``):
        the student answers them and the judge scores them like the pool. With ``verify`` only those past
        delta join the hard part (the rest the easy part); otherwise all of them count as hard. Returns
        (hard part, easy part, fraction hard or None when not measured)."""
        e = self.steps.expand
        verify = bool(e.get("verify", False))
        if not new_items or not (verify or e.get("measure", False)):
            return new_items, [], None
        config = {"generation": to_container(self.cfg.generation), "mfd": self._mfd_signature()}
        inputs = {"expanded": records_hash(new_items), "student": self._hash_of(student_dir)}

        def compute():
            answered, a_counts = respond.student_answers(fresh(new_items), self.generator, student_dir)
            judged, j_counts = self._judge(answered, "expand_mfd", r)
            return judged, {**a_counts, **j_counts}

        checked = self._records_step("expand_mfd", r, config, inputs, compute)
        hard = [ex for ex in checked.records if ex.meta.get("hard")]
        fraction = round(len(hard) / len(checked.records), 4)
        if not verify:
            return checked.records, [], fraction
        return hard, [ex for ex in checked.records if not ex.meta.get("hard")], fraction

    def mix(self, r: int, hard: list[Example], easy: list[Example]) -> tuple[StepResult, float]:
        """The round's mix: alpha_r of size_r from the hard part, the rest easy, balanced to the task ratios.
        Returns the mix and alpha_r."""
        ratios = self.ratios
        config = {"curriculum": to_container(self.cfg.curriculum), "ratios": ratios, "seed": self.seed}
        inputs = {"hard": records_hash(hard), "easy": records_hash(easy)}
        alpha, size, mode = curriculum.round_plan(self.cfg.curriculum, r, len(hard) + len(easy))

        def compute():
            items, counts = curriculum.build_mix(fresh(hard), fresh(easy), alpha=alpha, size=size, mode=mode,
                                                 resample=balance.resample, ratios=ratios, seed=self.seed, rnd=r)
            counts["task_mix_before"] = balance.distribution(hard + easy)
            counts["task_mix_after"] = balance.distribution(items)
            return items, counts

        return self._records_step("mix", r, config, inputs, compute), alpha

    def refine(self, r: int, mixed: StepResult) -> StepResult:
        """D_r: the mix with its answers rewritten in each task's style (``steps.refine``)."""
        rf = self.steps.refine
        config = {"refine": to_container(rf), "oracle": role_signature(self.cfg.oracle, "refiner")}
        inputs = {"mix": mixed.entry.artifact_hash}

        def compute():
            if not rf.enabled:
                return fresh(mixed.records), {"refined": 0}
            return refine.refine_responses(fresh(mixed.records), self.oracle, styles=to_container(rf.styles) or {},
                                           default_style=rf.get("default_style"), step="refine", rnd=r,
                                           failure_budget=self.budget)

        return self._records_step("dataset", r, config, inputs, compute)

    def train(self, r: int, init_dir: Path, data: StepResult, epochs: int | None = None, shared: bool = False) -> Path:
        """student_r: the previous student fine-tuned on ``data``; ``shared``: taken from (or stored in) the
        cache of students other runs trained with the same signature (one process only: in a multi-process
        job every rank must train)."""
        # a student may need its own number of passes (a random-init one needs many): the signature resolves
        # the epochs the fit makes, and the fit is given the same number
        config = training_signature(self.cfg, epochs, self.seed + r)
        epochs = config["epochs"]
        inputs = {"init": self._hash_of(init_dir), "data": data.entry.artifact_hash}
        work_dir = self.store.round_dir(r) / "train_work"

        def fit(tmp: Path) -> dict[str, Any]:
            return self._fit(r, init_dir, data, tmp, epochs, work_dir)

        if shared and launch_rank()[1] == 1:
            from tapir_exp.student.shared import shared_training

            fit = shared_training(Path(self.cfg.paths.cache_dir) / "students", f"round{r}",
                                  {"signature": self.store.signature("student", config, inputs)}, fit)
        trained = self.store.run_dir_step("student", r, config, inputs, fit, collective=True)
        if not trained.reused:
            shutil.rmtree(work_dir, ignore_errors=True)  # mid-round checkpoints are no longer needed
        self._note(r, "student", trained)
        counts = trained.entry.counts
        self.summary.update(r, train={k: counts.get(k) for k in ("first_loss", "final_loss", "losses", "steps", "tokens", "world_size",
                                                               "examples_per_step", "tokens_per_step",
                                                               "answer_tail_cut", "dropped_prompt_too_long", "shared_from")})
        if not trained.reused and counts.get("losses"):
            self.tracker.log_series(f"train/loss_round_{r}", counts["losses"], step=r)
        return trained.path

    def _fit(self, r: int, init_dir: Path, data: StepResult, out_dir: Path, epochs: int | None,
             work_dir: Path) -> dict[str, Any]:
        # imported here: a reused round imports neither torch nor Lightning
        from tapir_exp.student.live_metrics import LiveMetrics
        from tapir_exp.student.train import train_round

        self.release_devices()
        t = train_round(init_dir, [ex.messages(with_output=True) for ex in data.records], out_dir,
                        student_cfg=self.cfg.student, trainer_cfg=self.cfg.trainer, work_dir=work_dir,
                        seed=self.seed + r, max_epochs=epochs,
                        callbacks=[LiveMetrics(self.tracker.log_train_step, r)])  # curves while it trains
        return {"steps": t.steps, "tokens": t.tokens, "first_loss": t.first_loss, "final_loss": t.final_loss,
                "losses": [round(x, 4) for x in t.losses], "padding_efficiency": t.padding_efficiency,
                "resumed_from": t.resumed_from, **t.effective_batch, **t.data}

    def evaluate(self, r: int, model_dir: Path) -> dict[str, float]:
        """The configured suites (``eval``) on student_r, after every round or only the last."""
        ev = self.cfg.eval
        if not ev.get("every_round", True) and r != curriculum.rounds_to_run(self.cfg.curriculum):
            return {}
        judged_suites, skills = enabled_suites(self.cfg)
        if not (judged_suites or skills):
            return {}
        config = {"eval": to_container(ev), "generation": to_container(self.cfg.generation),
                  "oracle": role_signature(self.cfg.oracle, "eval_judge") if judged_suites else None}
        inputs = {"student": self._hash_of(model_dir)}
        model_name = f"{self.cfg.name}/{self.cfg.run_name}/round_{r}"
        out_dir = self.store.round_dir(r) / "eval"
        metrics, entry, _ = self.store.run_json_step(
            "eval", r, config, inputs,
            lambda: evaluate_suites(self.cfg, model_dir, lambda: self.oracle, self.generator, out_dir, r, model_name))
        self.summary.update(r, eval=metrics)
        self.summary.add_seconds(r, "eval", entry.seconds)
        return metrics

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
                               justification_tokens=int(m.get("justification_tokens") or 0), step=step, rnd=r,
                               failure_budget=self.budget)

    def record_round(self, r: int, pool: list[Example], answers: StepResult, judged: StepResult,
                     hard: list[Example], new_items: list[Example], expanded_hard_fraction: float | None,
                     mixed: StepResult, alpha: float, dataset: StepResult) -> None:
        """The round's numbers in the run summary and the tracker."""
        by_task_hard = Counter(ex.task or "Others" for ex in hard)  # what was selected as "hard"
        # what MFD finds hard, per task, whatever the selection (random selection ablates only the choice)
        judged_by_task = Counter(ex.task or "Others" for ex in judged.records)
        mfd_hard_by_task = Counter(ex.task or "Others" for ex in judged.records if ex.meta.get("hard"))
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

    # ------------------------------------------------------------------ bookkeeping
    def _hash_of(self, path: Path) -> str:
        """The recorded hash of an artifact this run produced (no re-hashing of multi-GB checkpoints)."""
        return self.store.hash_of(path)

    def _records_step(self, step: str, r: int, config: dict[str, Any], inputs: dict[str, Any], compute: Any) -> StepResult:
        """A records step through the store (reused when its signature is unchanged), noted in the summary."""
        result = self.store.run_records_step(step, r, config, inputs, compute)
        self._note(r, step, result)
        return result

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
        rec = self.summary.round(r)
        # A round this process only reused keeps what the process that computed it recorded: its wall time
        # (not the re-run's second) and its oracle usage (the oracle of a fully reused run is never built).
        if r in self.store.computed_rounds or "wall_seconds" not in rec:
            rec["wall_seconds"] = round(time.time() - t0, 1)
        if self._oracle is not None or "oracle" not in rec:
            rec["oracle"] = usage_for_round(self.oracle_usage(), r)
        self.summary.record_environment(r)
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
        student = p.run()
        rounds = curriculum.rounds_to_run(cfg.curriculum)
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


__all__ = ["run_pipeline", "Pipeline"]


class _AfterOracleRelease:
    """The configured generator, called only after the oracle has released its devices."""

    def __init__(self, generator: Any, release: Any):
        self.inner, self.release = generator, release

    def generate(self, model_dir: Any, conversations: list[list[dict[str, str]]]) -> list[Any]:
        self.release()
        return self.inner.generate(model_dir, conversations)
