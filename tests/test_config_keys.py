"""Config keys mean something: every key a YAML file sets is read by some code, and every key the code reads is
defined by some YAML file - over every option of every group and every experiment, composed as a run composes it.

"Read" is what tests/support_config.py finds in the package's source, plus: the keyword arguments of a
``_target_`` node (``hydra.utils.instantiate`` passes them to the target, so its signature is checked), keys
other YAML values interpolate (``${paths.cache_dir}``), and mappings whose keys are data, not config keys.
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from tests.support_config import composed_every_option, read_paths

REPO = Path(__file__).resolve().parents[1]

# Mappings whose keys are data (task labels, model names, field names), read as a whole by the code.
DATA_MAPPINGS = {"tasks.ratios", "oracle.prices", "data.fields", "steps.refine.styles"}
# Keys the code reads that no shipped YAML defines, each added with `+key=value` when wanted - and why.
PLUS_ADDED = {
    # restricts the skills world's exact-match evaluation to some tasks (all of them by default)
    "eval.skills.tasks",
}
# Keys read only when another key of the same config has one of these values: set (not null) otherwise, they
# are dead - a value that looks like it matters and does not.
READ_ONLY_WHEN = {
    "curriculum.alpha_end": ("curriculum.schedule", {"linear"}),
    "curriculum.alphas": ("curriculum.schedule", {"list"}),
    "trainer.deepspeed.stage3_prefetch_bucket_size": ("trainer.deepspeed.stage", {3}),
    "trainer.deepspeed.stage3_param_persistence_threshold": ("trainer.deepspeed.stage", {3}),
    "trainer.deepspeed.stage3_gather_16bit_weights_on_model_save": ("trainer.deepspeed.stage", {3}),
    "trainer.deepspeed.offload_parameters": ("trainer.deepspeed.stage", {3}),
    **{f"data.{k}": ("data.generator", {None}) for k in ("path", "format", "fields", "on_error", "id_prefix")},
}
# Keys read through a key name computed at run time, which a reading of the source cannot follow.
COMPUTED_READS = {
    # tapir_exp.eval.runner.item_limit(node, "max_items" | "max_questions") reads the key and "demo_" + the key
    "eval.alpaca_eval.max_items", "eval.alpaca_eval.demo_max_items",
    "eval.mt_bench.max_questions", "eval.mt_bench.demo_max_questions",
}
INSTANTIATE_KEYS = {"_target_", "_recursive_", "_convert_", "_partial_", "_args_"}
DICT_METHODS = {"get", "items", "keys", "values", "pop", "setdefault"}


@pytest.fixture(scope="module")
def configs() -> list[tuple[str, dict]]:
    return [(f"{group}={option}", container) for group, option, _, container in composed_every_option()]


@pytest.fixture(scope="module")
def reads() -> dict[str, set[str]]:
    found = read_paths(REPO / "tapir_exp")
    for path in COMPUTED_READS:
        found.setdefault(path, set()).add("computed key")
    return {p: w for p, w in found.items() if p.rsplit(".", 1)[-1] not in DICT_METHODS}


def _leaves(node, prefix=""):
    """(path, value, the innermost enclosing _target_ node's path or None) of every leaf."""
    def walk(n, path, target):
        if isinstance(n, dict) and n and path not in DATA_MAPPINGS:
            inner = path if "_target_" in n else target
            for k, v in n.items():
                yield from walk(v, f"{path}.{k}" if path else str(k), inner)
        else:
            yield path, n, target
    yield from walk(node, prefix, None)


def _matches(pattern: str, path: str) -> bool:
    a, b = pattern.split("."), path.split(".")
    return len(a) == len(b) and all(x == "*" or y == "*" or x == y for x, y in zip(a, b, strict=True))


def _interpolated(configs) -> set[str]:
    refs = set()
    for _, cfg in configs:
        for _, value, _ in _leaves(cfg):
            if isinstance(value, str):
                refs |= set(re.findall(r"\$\{(?:oc\.select:)?([A-Za-z_][\w.]*)", value))
    return refs


def _get(cfg: dict, path: str):
    for part in path.split("."):
        cfg = cfg[part]
    return cfg


@functools.cache
def _target_accepts(target: str, key: str) -> bool:
    params = inspect.signature(get_object(target)).parameters
    return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_every_yaml_key_is_read(configs, reads):
    interpolated = _interpolated(configs)
    dead = set()
    for option, cfg in configs:
        for path, _value, target in _leaves(cfg):
            if path.split(".")[-1] in INSTANTIATE_KEYS or path in interpolated:
                continue
            if target is not None:  # instantiate passes the first key under the _target_ node to it
                key = path[len(target) + 1:].split(".")[0]
                node = _get(cfg, target)
                if _target_accepts(node["_target_"], key):
                    continue
                dead.add(f"{path} ({node['_target_']} takes no {key!r}; in {option})")
                continue
            if not any(_matches(r, path) for r in reads):
                dead.add(f"{path} (in {option})")
    assert not dead, "YAML keys no code reads:\n  " + "\n  ".join(sorted(dead))


def test_every_key_the_code_reads_is_defined(configs, reads):
    defined: set[str] = set()
    leaves: set[str] = set()  # defined with a value that is not a mapping (a list index below it is fine)
    for _, cfg in configs:
        def walk(n, path):
            if path:
                defined.add(path)
            if isinstance(n, dict):
                for k, v in n.items():
                    walk(v, f"{path}.{k}" if path else str(k))
            elif path:
                leaves.add(path)
        walk(cfg, "")
    undefined = []
    for path, where in sorted(reads.items()):
        parts = path.split(".")
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts))]
        if any(_matches(path, d) for d in defined) or any(any(_matches(p, d) for d in leaves) for p in prefixes):
            continue
        if path in PLUS_ADDED or any(p in DATA_MAPPINGS for p in prefixes):
            continue
        undefined.append(f"{path} (read at {', '.join(sorted(where)[:3])})")
    assert not undefined, "keys the code reads that no YAML defines:\n  " + "\n  ".join(undefined)


def test_no_key_is_set_where_it_is_not_read(configs):
    dead = []
    for option, cfg in configs:
        c = OmegaConf.create(cfg)
        for key, (governor, values) in READ_ONLY_WHEN.items():
            value = OmegaConf.select(c, key, default=None, throw_on_missing=False)
            if value is not None and OmegaConf.select(c, governor, default=None) not in values:
                dead.append(f"{key} set in {option}, but read only when {governor} is one of {sorted(map(str, values))}")
    assert not dead, "\n".join(dead)


def test_the_key_tests_can_fail(configs, reads):
    """The checks above see a dead key, an undefined read and a conditional dead key when there is one."""
    option, cfg = next((o, c) for o, c in configs if o == "student=tiny")
    cfg = {**cfg, "student": {**cfg["student"], "name": "tiny"}}
    with pytest.raises(AssertionError, match=r"student\.name"):
        test_every_yaml_key_is_read([(option, cfg)], reads)
    with pytest.raises(AssertionError, match=r"objective"):
        test_every_key_the_code_reads_is_defined([(o, {k: v for k, v in c.items() if k != "objective"})
                                                  for o, c in configs], reads)
    cur = {**cfg, "curriculum": {**cfg["curriculum"], "schedule": "constant"}}
    with pytest.raises(AssertionError, match=r"curriculum\.alpha_end"):
        test_no_key_is_set_where_it_is_not_read([(option, cur)])
