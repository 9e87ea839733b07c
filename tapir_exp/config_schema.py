"""The config check: every value the code relies on, its type, range, allowed values or file, in one table.

``check_config(cfg)`` runs at start-up (``tapir_exp.cli``), before a model loads or a request is sent, in
every mode, and raises :class:`~tapir_exp.errors.ConfigError` for the first bad value, rendered as one line::

    config 'steps.mfd.delta': got 'abc' (str), expected a number

A rule names a dotted key (``*`` matches any one key, e.g. ``oracle.roles.*.max_tokens``). ``required``
rules refuse a key that is absent; the others apply only when the key is present (keys other modules are
adding, or that only some options define). Keys without a rule are not refused: the table lists what must
hold, not every key there may be. ``when`` limits a rule to configurations where it matters (the AlpacaEval
reference file only when that suite is on).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from tapir_exp.errors import ConfigError
from tapir_exp.llm.base import ROLES

Check = Callable[[Any], str | None]  # None when the value is fine, else what was expected

_MISSING = object()


# ---------------------------------------------------------------------------------------------- value checks
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _bounds(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


def _in_bounds(v: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    expected = " ".join(x for x in ("an integer", _bounds(lo, hi, False, False)) if x)
    return lambda v: None if _is_int(v) and _in_bounds(v, lo, hi, False, False) else expected


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    expected = " ".join(x for x in ("a number", _bounds(lo, hi, lo_open, hi_open)) if x)
    return lambda v: None if _is_number(v) and _in_bounds(v, lo, hi, lo_open, hi_open) else expected


def boolean() -> Check:
    return lambda v: None if isinstance(v, bool) else "true or false"


def string() -> Check:
    return lambda v: None if isinstance(v, str) and v.strip() else "a non-empty string"


def choice(*values: Any) -> Check:
    expected = "one of: " + ", ".join(str(x) for x in values)
    return lambda v: None if (not isinstance(v, bool) and v in values) else expected


def choice_of(values: Callable[[], list[str]]) -> Check:
    """Allowed values that the code defines (prompt files, chat templates), looked up when checked."""
    return lambda v: choice(*values())(v)


def existing_file() -> Check:
    return lambda v: None if isinstance(v, str) and Path(v).expanduser().is_file() else "an existing file"


def existing_dir() -> Check:
    return lambda v: None if isinstance(v, str) and Path(v).expanduser().is_dir() else "an existing directory"


def list_of(item: Check, min_len: int = 0) -> Check:
    def check(v: Any) -> str | None:
        expected = f"a list{f' of at least {min_len}' if min_len else ''} of {item(_MISSING) or 'values'}"
        if not isinstance(v, list) or len(v) < min_len or any(item(x) for x in v):
            return expected
        return None

    return check


def mapping_of(value: Check) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, dict) or any(not isinstance(k, str) or value(x) for k, x in v.items()):
            return f"a mapping of names to {value(_MISSING) or 'values'}"
        return None

    return check


def target() -> Check:
    """A node that ``hydra.utils.instantiate`` builds: a mapping with a ``_target_`` string."""
    return lambda v: None if isinstance(v, dict) and isinstance(v.get("_target_"), str) else \
        "a mapping with a _target_ (a class or function to build)"


def one_of(*checks: Check) -> Check:
    def check(v: Any) -> str | None:
        fails = [c(v) for c in checks]
        return None if any(f is None for f in fails) else " or ".join(f for f in fails if f)

    return check


def null_or(c: Check) -> Check:
    return lambda v: None if v is None else (f"null or {c(_MISSING)}" if c(v) else None)


# ---------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Rule:
    key: str
    check: Check
    required: bool = True
    # Applies only when this returns true for the whole (resolved) config.
    when: Callable[[dict[str, Any]], bool] | None = None


def _get(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _on(key: str) -> Callable[[dict[str, Any]], bool]:
    return lambda cfg: bool(_get(cfg, key))


def _from_file(cfg: dict[str, Any]) -> bool:
    """The pool is read from data.path (not built by a data.generator, as the skills world's is)."""
    return _get(cfg, "data.generator") is None


def _refine_styles() -> list[str]:
    from tapir_exp.prompts import available

    return [name.removeprefix("refine_") for name in available("refine_")]


def _chat_templates() -> list[str]:
    from tapir_exp.student.models import TEMPLATES

    return sorted(TEMPLATES)


SCORING = ("generative", "logprob")
# What tapir_exp.student.strategies.build_strategy accepts (tests/test_config_check.py keeps them in step).
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp", "single_device", "deepspeed")
# Lightning's accepted `precision` values (tests/test_config_check.py compares them with Lightning's own list).
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true", "64", "32", "16", "bf16")
fraction = number(0, 1)
count = integer(1)
optional_count = null_or(integer(1))
non_negative = number(0)
positive = number(0, lo_open=True)

RULES: tuple[Rule, ...] = (
    # -- top level
    Rule("name", string()),
    Rule("seed", integer()),
    Rule("mode", choice("run", "plan", "eval")),
    Rule("objective", string(), required=False),
    # -- steps
    Rule("steps.warmup.size", optional_count),
    Rule("steps.warmup.epochs", optional_count),
    Rule("steps.warmup.share", boolean()),
    Rule("share_generations", boolean()),
    Rule("steps.mfd.delta", number()),
    Rule("steps.mfd.both_orders", boolean()),
    Rule("steps.mfd.scoring", choice(*SCORING)),
    Rule("steps.mfd.format", choice("pair", "single")),  # tapir_exp.steps.judge.judge_mfd
    Rule("steps.mfd.selection", choice("mfd", "random")),
    Rule("steps.mfd.max_items", optional_count),
    Rule("steps.mfd.compare", choice("gt", "ge"), required=False),
    Rule("steps.mfd.justification_tokens", integer(0), required=False),
    Rule("steps.classify.method", choice("oracle", "distill", "given")),
    Rule("steps.classify.sample_size", count),
    Rule("steps.classify.holdout_fraction", number(0, 1, hi_open=True)),
    Rule("steps.balance.enabled", boolean()),
    Rule("steps.expand.enabled", boolean()),
    Rule("steps.expand.per_round", integer(0)),
    Rule("steps.expand.shots", count),
    Rule("steps.expand.rouge_l_threshold", number(0, 1, lo_open=True)),
    Rule("steps.expand.max_attempts_factor", count),
    Rule("steps.expand.verify", boolean(), required=False),
    Rule("steps.expand.measure", boolean(), required=False),
    Rule("steps.refine.enabled", boolean()),
    Rule("steps.refine.styles", null_or(mapping_of(choice_of(_refine_styles)))),
    Rule("steps.refine.default_style", null_or(choice_of(_refine_styles))),
    Rule("steps.failure_budget", fraction),
    # -- data (the file itself is checked by its reader, which names the file, line and field)
    Rule("data.path", string(), when=_from_file),
    Rule("data.generator", target(), required=False, when=lambda c: not _from_file(c)),
    Rule("data.format", choice("auto", "alpaca", "sharegpt", "openai", "hf"), when=_from_file),
    Rule("data.fields", null_or(mapping_of(string())), when=_from_file),
    Rule("data.on_error", choice("raise", "skip"), when=_from_file),
    Rule("data.id_prefix", null_or(string()), when=_from_file),
    Rule("data.use_given_responses", boolean()),
    Rule("data.pool_size", optional_count),
    Rule("data.classify_method", choice("oracle", "distill", "given"), required=False),
    # -- tasks
    Rule("tasks.labels", list_of(string(), min_len=1)),
    Rule("tasks.fallback", string()),
    Rule("tasks.ratios", null_or(mapping_of(non_negative))),
    # -- curriculum
    Rule("curriculum.rounds", integer(0)),  # 0: warm-up only (the skills world's warm-up measurement)
    Rule("curriculum.schedule", choice("constant", "linear", "list")),
    Rule("curriculum.alpha_start", fraction, when=lambda c: _get(c, "curriculum.schedule") != "list"),
    Rule("curriculum.alpha_end", fraction, when=lambda c: _get(c, "curriculum.schedule") == "linear"),
    Rule("curriculum.alphas", list_of(fraction, min_len=1), when=lambda c: _get(c, "curriculum.schedule") == "list"),
    Rule("curriculum.size", one_of(null_or(count), list_of(count, min_len=1))),
    Rule("curriculum.mix", choice("curriculum", "all")),
    Rule("curriculum.single_round", boolean(), required=False),
    # -- student
    Rule("student.init", target()),
    Rule("student.chat_template", null_or(choice_of(_chat_templates))),
    Rule("student.max_epochs", optional_count, required=False),
    Rule("student.max_length", count),
    Rule("student.lora.enabled", boolean()),
    Rule("student.lora.r", count, when=_on("student.lora.enabled")),
    Rule("student.lora.alpha", positive, when=_on("student.lora.enabled")),
    Rule("student.lora.dropout", number(0, 1, hi_open=True), when=_on("student.lora.enabled")),
    Rule("student.lora.target_modules", list_of(string(), min_len=1), when=_on("student.lora.enabled")),
    Rule("student.lora.merge", boolean(), when=_on("student.lora.enabled")),
    Rule("student.gradient_checkpointing", boolean()),
    Rule("student.attn_implementation", null_or(string()), required=False),
    # -- oracle
    Rule("oracle.mfd_delta", number()),
    Rule("oracle.backends.*", null_or(target())),
    *(Rule(f"oracle.roles.{role}.backend", string()) for role in ROLES),
    Rule("oracle.roles.*.max_tokens", count, required=False),
    Rule("oracle.roles.*.temperature", non_negative, required=False),
    Rule("oracle.roles.*.scoring", choice(*SCORING), required=False),
    Rule("oracle.limits.concurrency", count),
    Rule("oracle.limits.requests_per_minute", null_or(positive), required=False),
    Rule("oracle.limits.tokens_per_minute", null_or(positive), required=False),
    Rule("oracle.limits.timeout_s", positive, required=False),
    Rule("oracle.limits.max_retries", integer(0), required=False),
    Rule("oracle.limits.backoff_base_s", non_negative, required=False),
    Rule("oracle.limits.backoff_max_s", non_negative, required=False),
    Rule("oracle.limits.parse_retries", integer(0), required=False),
    Rule("oracle.cache.enabled", boolean(), required=False),
    Rule("oracle.cache.path", string(), when=_on("oracle.cache.enabled"), required=False),
    Rule("oracle.prices", null_or(mapping_of(mapping_of(non_negative))), required=False),
    Rule("oracle.progress", boolean(), required=False),
    # -- trainer (keys Lightning reads are passed on; these are the ones our code interprets)
    Rule("trainer.accelerator", choice("cpu", "gpu", "cuda", "mps", "tpu", "auto")),
    Rule("trainer.devices", one_of(integer(-1), choice("auto"), list_of(integer(0), min_len=1))),
    Rule("trainer.num_nodes", count, required=False),
    Rule("trainer.strategy", choice(*STRATEGIES)),
    Rule("trainer.precision", choice(*PRECISIONS)),
    Rule("trainer.max_epochs", count),
    Rule("trainer.max_steps", one_of(choice(-1), count), required=False),
    Rule("trainer.batch_size", count),
    Rule("trainer.accumulate_grad_batches", count, required=False),
    Rule("trainer.gradient_clip_val", null_or(non_negative), required=False),
    Rule("trainer.lr", positive),
    Rule("trainer.weight_decay", non_negative, required=False),
    Rule("trainer.warmup_ratio", fraction, required=False),
    Rule("trainer.min_lr_ratio", fraction, required=False),
    Rule("trainer.packing", boolean(), required=False),
    Rule("trainer.pack_length", optional_count, required=False),
    Rule("trainer.group_by_length", boolean(), required=False),
    Rule("trainer.num_workers", integer(0), required=False),
    Rule("trainer.log_every_n_steps", count, required=False),
    Rule("trainer.checkpoint_every_n_steps", count, required=False),
    Rule("trainer.deepspeed.stage", choice(2, 3), required=False,
         when=lambda c: _get(c, "trainer.strategy") == "deepspeed"),
    # -- generation (keys of whichever generator is chosen)
    Rule("generation", target()),
    Rule("generation.max_new_tokens", count),
    Rule("generation.temperature", non_negative, required=False),
    Rule("generation.top_p", number(0, 1, lo_open=True), required=False),
    Rule("generation.batch_size", count, required=False),
    Rule("generation.tensor_parallel_size", count, required=False),
    Rule("generation.data_parallel_size", count, required=False),
    Rule("generation.max_model_len", count, required=False),
    Rule("generation.gpu_memory_utilization", number(0, 1, lo_open=True), required=False),
    Rule("generation.python", null_or(existing_file()), required=False),
    Rule("generation.concurrency", count, required=False),
    Rule("generation.timeout_s", positive, required=False),
    Rule("generation.max_retries", integer(0), required=False),
    # -- eval
    Rule("eval.every_round", boolean()),
    Rule("eval.alpaca_eval.enabled", boolean()),
    Rule("eval.alpaca_eval.path", existing_file(), when=_on("eval.alpaca_eval.enabled")),
    Rule("eval.alpaca_eval.max_items", optional_count, required=False),
    Rule("eval.alpaca_eval.both_orders", boolean(), required=False),
    Rule("eval.alpaca_eval.annotator", null_or(string()), required=False),
    Rule("eval.alpaca_eval.lc.gamed_annotations", null_or(existing_file()), required=False,
         when=_on("eval.alpaca_eval.enabled")),
    Rule("eval.alpaca_eval.lc.regularize_to_baseline", non_negative, required=False),
    Rule("eval.alpaca_eval.lc.cv_folds", integer(2), required=False),
    Rule("eval.mt_bench.enabled", boolean()),
    Rule("eval.mt_bench.path", existing_file(), when=_on("eval.mt_bench.enabled")),
    Rule("eval.mt_bench.max_questions", optional_count, required=False),
    Rule("eval.alpaca_eval.demo_max_items", optional_count, required=False),
    Rule("eval.mt_bench.demo_max_questions", optional_count, required=False),
    Rule("eval.mt_bench.judge_prompts", null_or(existing_file()), required=False, when=_on("eval.mt_bench.enabled")),
    Rule("eval.mt_bench.references", null_or(existing_file()), required=False, when=_on("eval.mt_bench.enabled")),
    Rule("eval.model", null_or(existing_dir()), required=False),
    Rule("eval.model_outputs", null_or(existing_file()), required=False),
    Rule("eval.mt_bench_answers", null_or(existing_file()), required=False),
    Rule("eval.skills.enabled", boolean(), required=False),
    Rule("eval.skills.per_cell", count, required=False),
    Rule("eval.skills.seed", integer(), required=False),
    # -- logger
    Rule("logger.mode", null_or(choice("online", "offline", "disabled")), required=False),
    Rule("logger.project", string(), required=False),
    # -- plan (conf/mode/plan.yaml): the dry run's assumed hard fraction, one number or one per round
    Rule("plan.hard_fraction", one_of(number(0, 1), list_of(number(0, 1), min_len=1)), required=False),
    # -- paths
    *(Rule(f"paths.{k}", string()) for k in ("root", "output_dir", "run_dir", "cache_dir")),
)


# ---------------------------------------------------------------------------------------------- checking
def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, str):
        return f"{v!r} (str)"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict | list):
        text = str(v)
        return text if len(text) <= 60 else text[:57] + "..."
    return repr(v)


@dataclass(frozen=True)
class _NotMapping:
    value: Any


def _expand(node: Any, parts: list[str], prefix: str) -> list[tuple[str, Any]]:
    """(dotted key, value) for every key matching ``parts``: ``_MISSING`` for an absent key, ``_NotMapping`` where
    a node on the way holds a value instead of keys; nothing below a null node (an option switched off)."""
    if not parts:
        return [(prefix, node)]
    if node is _MISSING:
        return [(".".join(x for x in (prefix, *parts) if x), _MISSING)]
    if node is None:
        return []
    if not isinstance(node, dict):
        return [(prefix, _NotMapping(node))]
    head, rest = parts[0], parts[1:]
    out = []
    for k in (list(node) if head == "*" else [head]):
        out += _expand(node.get(k, _MISSING), rest, f"{prefix}.{k}" if prefix else str(k))
    return out


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """The job config as plain data; a value that cannot be resolved is reported by its key."""
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        return OmegaConf.to_container(job, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as e:
        raise ConfigError(str(e.full_key), "no value given (??? in the config): set it on the command line") from None
    except InterpolationResolutionError as e:
        raise ConfigError(str(e.full_key), f"cannot be resolved: {str(e).splitlines()[0]}") from None
    except OmegaConfBaseException as e:  # e.g. a malformed ${...}
        raise ConfigError(str(getattr(e, "full_key", "") or "?"), str(e).splitlines()[0]) from None


def check_config(cfg: DictConfig | Mapping[str, Any], rules: tuple[Rule, ...] = RULES) -> None:
    """Raise :class:`ConfigError` (one line: key, the value it got, what it expects) for the first bad value."""
    data = _resolved(cfg) if isinstance(cfg, DictConfig | ListConfig) else dict(cfg)
    for rule in rules:
        if rule.when is not None and not rule.when(data):
            continue
        for key, value in _expand(data, rule.key.split("."), ""):
            if value is _MISSING:
                if rule.required:
                    raise ConfigError(key, f"missing, expected {rule.check(_MISSING)}")
                continue
            if isinstance(value, _NotMapping):
                raise ConfigError(key, f"got {_describe(value.value)}, expected a mapping (with {rule.key})")
            expected = rule.check(value)
            if expected:
                raise ConfigError(key, f"got {_describe(value)}, expected {expected}")
    _check_relations(data)


def _check_relations(c: dict[str, Any]) -> None:
    """Rules between keys."""
    labels = _get(c, "tasks.labels") or []
    if _get(c, "tasks.fallback") not in labels:
        raise ConfigError("tasks.fallback", f"got {_describe(_get(c, 'tasks.fallback'))}, expected one of tasks.labels")
    unknown = sorted(set(_get(c, "tasks.ratios") or {}) - set(labels))
    if unknown:
        raise ConfigError("tasks.ratios", f"got ratios for {', '.join(unknown)}, expected only tasks.labels")
    ratios = _get(c, "tasks.ratios")
    if ratios is not None and sum(ratios.values()) <= 0:
        raise ConfigError("tasks.ratios", "got ratios summing to 0, expected a positive total (or null)")
    rounds = _get(c, "curriculum.rounds")
    for key in ("curriculum.alphas", "curriculum.size"):
        v = _get(c, key)
        if isinstance(v, list) and (key == "curriculum.size" or _get(c, "curriculum.schedule") == "list") \
                and len(v) < rounds:
            raise ConfigError(key, f"got {len(v)} value(s), expected one per round (curriculum.rounds={rounds})")
    backends = _get(c, "oracle.backends") or {}
    for role in ROLES:
        name = _get(c, f"oracle.roles.{role}.backend")
        if backends.get(name) is None:
            usable = ", ".join(k for k, v in backends.items() if v is not None)
            raise ConfigError(f"oracle.roles.{role}.backend", f"got {_describe(name)}, expected a backend of "
                                                              f"oracle.backends ({usable})")
