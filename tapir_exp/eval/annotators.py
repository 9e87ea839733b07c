"""AlpacaEval annotators: who decides, per instruction, whether the evaluated model's output beats the
reference output.

``tapir_pairwise`` (the embedded default): our own prompt (``prompts/eval_pairwise.txt``) asked in both
presentation orders, scored by the probabilities of "1"/"2" where the backend returns log-probabilities. Fit for
small local judges; its numbers are not leaderboard numbers.

Any other name is one of alpaca_eval's annotator configs (``weighted_alpaca_eval_gpt4_turbo`` is the AlpacaEval
2.0 leaderboard's), or a path to a ``configs.yaml`` in alpaca_eval's layout: alpaca_eval's own
``PairwiseAnnotator`` runs it — its prompt template, its seeded order randomisation, its completion parser —
and only its completions are routed through our oracle client (``eval_judge`` role), so the cache, limits,
retries and the usage ledger hold and nothing reaches the network on its own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tapir_exp.errors import ConfigError
from tapir_exp.prompts import load_prompt, render

TAPIR_PAIRWISE = "tapir_pairwise"
# completions_kwargs of an alpaca_eval annotator config that our client can honour (the rest of alpaca_eval's
# openai decoder options — logit biases, function calling — cannot be sent through the oracle client).
SENDABLE = {"model_name", "max_tokens", "temperature", "top_p", "logprobs", "top_logprobs", "seed", "stop"}
IGNORED = {"is_strip", "requires_chatml", "num_procs", "batch_size", "price_per_token", "client_kwargs"}


@dataclass
class Annotated:
    preferences: list[float | None]  # per evaluation item, alpaca_eval's scale: 1 reference better, 2 model better
    records: list[dict[str, Any]]  # written as annotations.json
    protocol: dict[str, Any] = field(default_factory=dict)


def _digest(*texts: str) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
    return h.hexdigest()[:12]


class TapirPairwise:
    """Our own pairwise prompt; both orders averaged (position bias), or one order chosen by the instruction."""

    name = TAPIR_PAIRWISE

    def __init__(self, both_orders: bool = True):
        self.both_orders = both_orders

    def protocol(self) -> dict[str, Any]:
        return {"annotator": self.name, "annotator_hash": _digest(load_prompt("eval_pairwise").template),
                "annotator_model": None}

    def annotate(self, items: list[dict[str, Any]], outputs: list[dict[str, Any]], oracle: Any,
                 rnd: int) -> Annotated:
        requests, slots = [], []
        for i, (it, out) in enumerate(zip(items, outputs, strict=True)):
            orders = (1, 2) if self.both_orders else (
                1 + int(hashlib.sha256(it["instruction"].encode()).hexdigest(), 16) % 2,)
            for model_slot in orders:
                o1, o2 = (out["output"], it["output"]) if model_slot == 1 else (it["output"], out["output"])
                prompt = render("eval_pairwise", instruction=it["instruction"], output_1=o1, output_2=o2)
                requests.append(oracle.request("eval_judge", [{"role": "user", "content": prompt}],
                                               id=f"alpaca_eval/{i}/{model_slot}", max_tokens=4))
                slots.append((i, model_slot))
        results = oracle.rating_many("eval_judge", requests, step="eval_alpaca", rnd=rnd, scale=(1, 2))
        per_item: dict[int, list[float]] = {}
        records = []
        for (i, slot), res in zip(slots, results, strict=True):
            # a rating on {1, 2} says which response is better; alpaca_eval's 2 means the model's
            pref = None if res.value is None else (res.value if slot == 2 else 3.0 - res.value)
            records.append({"instruction": items[i]["instruction"], "model_slot": slot, "preference": pref,
                            "method": res.method, "judge_text": res.text, "error": res.error})
            if pref is not None:
                per_item.setdefault(i, []).append(pref)
        prefs = [sum(per_item[i]) / len(per_item[i]) if i in per_item else None for i in range(len(items))]
        return Annotated(prefs, records, self.protocol())


def resolve_alpaca_eval_config(annotator: str) -> Path:
    """An annotator config name shipped by the installed alpaca_eval, or a path to a configs.yaml (or to the
    directory holding one)."""
    path = Path(annotator).expanduser()
    if path.is_dir():
        path = path / "configs.yaml"
    if path.is_file():
        return path.resolve()
    try:
        constants = _import_alpaca_eval("constants")
    except ImportError as e:
        raise ConfigError("eval.alpaca_eval.annotator", f"{annotator!r} needs alpaca_eval, which is not installed "
                          "(scripts/setup.sh installs alpaca-eval==0.6.6)") from e
    shipped = constants.EVALUATORS_CONFIG_DIR / annotator / "configs.yaml"
    if "/" not in annotator and shipped.is_file():
        return shipped
    names = sorted(p.parent.name for p in constants.EVALUATORS_CONFIG_DIR.glob("*/configs.yaml"))
    raise ConfigError("eval.alpaca_eval.annotator", f"{annotator!r} is neither {TAPIR_PAIRWISE}, a configs.yaml "
                      f"path, nor an annotator shipped by alpaca_eval ({', '.join(names[:8])}, ...)")


def _import_alpaca_eval(module: str) -> Any:
    """``alpaca_eval.<module>``; alpaca_eval sets the root logger to INFO when imported: keep the user's level."""
    import importlib

    root = logging.getLogger()
    level = root.level
    try:
        return importlib.import_module(f"alpaca_eval.{module}")
    finally:
        root.setLevel(level)


class OracleCompletions:
    """alpaca_eval's ``fn_completions`` contract over our oracle client: prompts in, a dict of lists out
    (``completions`` texts, ``completions_all`` OpenAI-style choices with their log-probabilities, price and
    time per example). A ChatML prompt becomes chat messages with alpaca_eval's own ``prompt_to_chatml``, as its
    openai decoder does for chat models; the annotator config's sampling parameters are sent as given."""

    def __init__(self, oracle: Any, rnd: int, label: str):
        self.oracle, self.round, self.label = oracle, rnd, label
        self.sent = 0  # alpaca_eval calls once per chunk of 128: request ids count on across calls

    def __call__(self, prompts: list[str], model_name: str | None = None, is_strip: bool = True,
                 **kwargs: Any) -> dict[str, list[Any]]:
        prompt_to_chatml = _import_alpaca_eval("utils").prompt_to_chatml
        # alpaca_eval's openai decoder's defaults where the config gives none (openai_completions' max_tokens,
        # _openai_completion_helper's temperature and top_p), not our role's
        send = {"max_tokens": 2048, "temperature": 0.7, "top_p": 1.0,
                **{k: v for k, v in kwargs.items() if k in SENDABLE}}
        if send.get("top_logprobs") is not None:
            send["top_logprobs"] = int(send["top_logprobs"])
        send["logprobs"] = bool(send.get("logprobs", False))
        requests = []
        for i, prompt in enumerate(prompts):
            prompt = prompt.strip() if is_strip else prompt
            if prompt.startswith("<|im_start|>"):
                messages = prompt_to_chatml(prompt)
                extra = sorted({k for m in messages for k in m} - {"role", "content"})
                if extra:
                    raise ConfigError("eval.alpaca_eval.annotator", f"{self.label}'s prompt has chat messages with "
                                      f"{extra[0]!r}, which the oracle client cannot send")
            else:
                messages = [{"role": "user", "content": prompt}]
            requests.append(self.oracle.request("eval_judge", messages, id=f"alpaca_eval/{self.label}/{self.sent + i}",
                                                **send))
        self.sent += len(prompts)
        t0 = time.perf_counter()
        results = self.oracle.chat_many("eval_judge", requests, step="eval_alpaca", rnd=self.round)
        seconds = (time.perf_counter() - t0) / max(1, len(prompts))
        choices = [_openai_choice(r) for r in results]
        return {"completions": [c["text"] for c in choices], "completions_all": choices,
                "price_per_example": [self.oracle.estimate_cost("eval_judge", r.prompt_tokens, r.completion_tokens)
                                      for r in results],
                "time_per_example": [seconds] * len(prompts)}


def _openai_choice(res: Any) -> dict[str, Any]:
    """A chat-completions choice as alpaca_eval's openai decoder hands it to a parser (``model_dump()`` of the
    SDK's choice plus ``text`` and ``total_tokens``); a failed request is alpaca_eval's empty completion."""
    if not res.ok:
        return {"text": "", "total_tokens": 0}
    choice: dict[str, Any] = {"text": res.text, "finish_reason": res.finish_reason, "index": 0,
                              "message": {"role": "assistant", "content": res.text},
                              "total_tokens": res.prompt_tokens + res.completion_tokens}
    if res.top_logprobs:
        content = []
        for pos in res.top_logprobs:
            ranked = sorted(pos.items(), key=lambda kv: -kv[1])
            content.append({"token": ranked[0][0], "logprob": ranked[0][1],
                            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in ranked]})
        choice["logprobs"] = {"content": content}
    return choice


class AlpacaEvalAnnotator:
    """alpaca_eval's ``PairwiseAnnotator`` with the annotator config ``annotator`` (name or path)."""

    def __init__(self, annotator: str):
        self.config_path = resolve_alpaca_eval_config(annotator)
        import yaml

        self.configs: dict[str, dict[str, Any]] = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        if not isinstance(self.configs, dict) or not all(isinstance(c, dict) for c in self.configs.values()):
            raise ConfigError("eval.alpaca_eval.annotator", f"{self.config_path}: expected alpaca_eval's layout "
                              "{annotator name: {prompt_template, fn_completions, completions_kwargs, ...}}")
        for name, conf in self.configs.items():
            unknown = sorted(set(conf.get("completions_kwargs") or {}) - SENDABLE - IGNORED)
            if unknown:
                raise ConfigError("eval.alpaca_eval.annotator", f"{self.config_path}: annotator {name!r} uses "
                                  f"completions_kwargs {unknown[0]!r}, which the oracle client cannot send")
        self.name = self.config_path.parent.name
        self.models = sorted({str((c.get("completions_kwargs") or {}).get("model_name")) for c in self.configs.values()})
        self.needs_logprobs = any((c.get("completions_kwargs") or {}).get("logprobs") for c in self.configs.values())

    def build(self, fn_completions: Any) -> Any:
        """alpaca_eval's PairwiseAnnotator whose single annotators call ``fn_completions`` instead of the
        decoder the config names; no annotation cache of its own (the oracle cache is the cache)."""
        pe = _import_alpaca_eval("annotators.pairwise_evaluator")

        class Routed(pe.PairwiseAnnotator):
            @property
            def SingleAnnotator(self) -> Any:  # noqa: N802 - alpaca_eval's name
                def make(**kwargs: Any) -> Any:
                    return pe.SinglePairwiseAnnotator(**{**kwargs, "fn_completions": fn_completions})
                return make

        return Routed(annotators_config=str(self.config_path), caching_path=None)

    def protocol(self, annotator: Any | None = None) -> dict[str, Any]:
        texts = [self.config_path.read_text(encoding="utf-8")]
        if annotator is not None:  # the prompt templates alpaca_eval resolved (files next to the config)
            texts += [a.prompt_template for _, a in sorted(annotator.annotators.items())]
        return {"annotator": self.name, "annotator_hash": _digest(*texts),
                "annotator_model": self.models[0] if len(self.models) == 1 else ",".join(self.models)}

    def annotate(self, items: list[dict[str, Any]], outputs: list[dict[str, Any]], oracle: Any,
                 rnd: int) -> Annotated:
        if self.needs_logprobs and not oracle.supports_logprobs("eval_judge"):
            raise ConfigError("oracle.roles.eval_judge", f"alpaca_eval's {self.name} reads the judge's "
                              "log-probabilities; this backend returns none (set logprobs: true on an endpoint that has them)")
        annotator = self.build(OracleCompletions(oracle, rnd, self.name))
        reference = [{"instruction": it["instruction"], "output": it["output"],
                      "generator": it.get("generator", "reference"), "dataset": it.get("dataset", "custom")}
                     for it in items]
        rows = annotator.annotate_head2head(outputs_1=reference, outputs_2=outputs)
        records = [{k: _plain(v) for k, v in row.items()} for row in rows]
        by_instruction = {r["instruction"]: r.get("preference") for r in records}
        prefs = [_preference(by_instruction.get(it["instruction"])) for it in items]
        return Annotated(prefs, records, self.protocol(annotator))


def _preference(p: Any) -> float | None:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return None
    return 1.5 if p == 0 else float(p)  # alpaca_eval's old 0 = draw


def _plain(v: Any) -> Any:
    """JSON-safe values of an alpaca_eval annotation row (NaN -> null, numpy scalars -> Python)."""
    if hasattr(v, "item") and not isinstance(v, list | dict | str):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def build_annotator(ae_cfg: Any) -> TapirPairwise | AlpacaEvalAnnotator:
    name = str(ae_cfg.get("annotator") or TAPIR_PAIRWISE)
    if name == TAPIR_PAIRWISE:
        return TapirPairwise(both_orders=bool(ae_cfg.get("both_orders", True)))
    return AlpacaEvalAnnotator(name)
