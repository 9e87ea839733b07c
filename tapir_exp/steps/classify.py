"""Task awareness: every instruction gets one label of the taxonomy in ``conf/tasks``.

Methods (``steps.classify.method``):
- ``oracle``: zero-shot labelling of every instruction by the classifier role; invalid answers -> fallback.
- ``distill``: the oracle labels a seeded sample; a TF-IDF + logistic-regression classifier trained on it
  labels the rest. Its agreement with the oracle on a held-out part of the sample is reported, so the saving
  (one oracle call per sampled item instead of per item) comes with a measured price.
- ``given``: keep labels already in the data (valid ones), ask the oracle only for the rest.
"""

from __future__ import annotations

import random
from typing import Any

from tapir_exp.prompts import render
from tapir_exp.prompts.parsers import parse_label
from tapir_exp.records import Example


def canonical_label(label: str | None, labels: list[str]) -> str | None:
    if not label:
        return None
    lookup = {lab.lower(): lab for lab in labels}
    return lookup.get(label.strip().lower())


def label_tasks(examples: list[Example], oracle: Any, *, labels: list[str], fallback: str, method: str = "oracle",
                sample_size: int = 2000, holdout_fraction: float = 0.2, seed: int = 0, step: str = "classify",
                rnd: int = 0, failure_budget: float | None = None) -> tuple[list[Example], dict[str, Any]]:
    counts: dict[str, Any] = {"method": method}
    todo = examples
    if method == "given":
        todo = []
        for ex in examples:
            lab = canonical_label(ex.task, labels)
            if lab:
                ex.task = lab
                ex.meta["task_source"] = "given"
            else:
                todo.append(ex)
        counts["given"] = len(examples) - len(todo)
        method = "oracle"
    if method == "oracle":
        counts.update(_oracle_label(todo, oracle, labels, fallback, step, rnd, failure_budget))
    elif method == "distill":
        counts.update(_distill_label(todo, oracle, labels, fallback, sample_size, holdout_fraction, seed, step,
                                     rnd, failure_budget))
    else:
        raise ValueError(f"steps.classify.method must be oracle, distill or given, got {method!r}")
    return examples, counts


def _oracle_label(examples, oracle, labels, fallback, step, rnd, failure_budget) -> dict[str, int]:
    if not examples:
        return {"oracle_labelled": 0, "invalid": 0}
    label_list = "\n".join(f"- {lab}" for lab in labels)
    requests = [oracle.request("classifier",
                               [{"role": "user", "content": render("classify", labels=label_list, instruction=ex.prompt)}],
                               id=f"classify/{ex.id}") for ex in examples]
    results = oracle.chat_many("classifier", requests, step=step, rnd=rnd, failure_budget=failure_budget)
    invalid = 0
    for ex, res in zip(examples, results, strict=True):
        label, valid = parse_label(res.text, labels, fallback) if res.ok else (fallback, False)
        invalid += not valid
        ex.task = label
        ex.meta["task_source"] = "oracle" if valid else "oracle-invalid"
    return {"oracle_labelled": len(examples), "invalid": invalid}


def _distill_label(examples, oracle, labels, fallback, sample_size, holdout_fraction, seed, step, rnd,
                   failure_budget) -> dict[str, Any]:
    if len(examples) <= sample_size:
        return _oracle_label(examples, oracle, labels, fallback, step, rnd, failure_budget)
    rng = random.Random(seed)
    sample_idx = set(rng.sample(range(len(examples)), sample_size))
    sample = [ex for i, ex in enumerate(examples) if i in sample_idx]
    rest = [ex for i, ex in enumerate(examples) if i not in sample_idx]
    counts: dict[str, Any] = dict(_oracle_label(sample, oracle, labels, fallback, step, rnd, failure_budget))
    import sklearn.linear_model  # noqa: F401  (loads scipy's and numpy's BLAS before limiting them)
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    # One BLAS thread: the matrices are small and sparse, and spinning BLAS threads on a busy node cost more
    # than they give (15x CPU measured on a shared 2-core machine; bench/data_scale.py).
    with threadpool_limits(limits=1):
        return _distill_fit_predict(sample, rest, holdout_fraction, fallback, counts)


def _distill_fit_predict(sample, rest, holdout_fraction, fallback, counts) -> dict[str, Any]:
    n_hold = max(1, int(len(sample) * holdout_fraction))
    hold, train = sample[:n_hold], sample[n_hold:]
    model = _fit(train)
    if model is None:  # the oracle used a single label: nothing to learn, everything gets it
        only = train[0].task if train else fallback
        for ex in rest:
            ex.task, ex.meta["task_source"] = only, "distilled"
        counts.update(distilled=len(rest), holdout_agreement=None)
        return counts
    agree = sum(p == ex.task for p, ex in zip(model.predict([e.prompt for e in hold]), hold, strict=True))
    counts["holdout_agreement"] = round(agree / len(hold), 4)
    # Refit on the whole sample for labelling the rest.
    model = _fit(sample) or model
    for ex, lab in zip(rest, model.predict([e.prompt for e in rest]), strict=True):
        ex.task = str(lab)
        ex.meta["task_source"] = "distilled"
    counts["distilled"] = len(rest)
    return counts


def _fit(examples: list[Example]):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    y = [ex.task for ex in examples]
    if len(set(y)) < 2:
        return None
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
                          # saga: the same L2 multinomial model as the default lbfgs (a convex problem, one
                          # optimum; identical labels on the 52K benchmark) fitted 5x faster on sparse TF-IDF.
                          LogisticRegression(max_iter=1000, C=5.0, solver="saga"))
    model.fit([ex.prompt for ex in examples], y)
    return model
