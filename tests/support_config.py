"""Config test support: every shipped option composed once per session, and which config keys the package's
code reads, found by reading its source (``ast``), for tests/test_config_keys.py.

A read is an attribute, ``.get("key")`` or ``["key"]`` on an expression that holds a config node: ``cfg`` (the
job config), a parameter named after its group (``data_cfg`` -> ``data``, ``trainer_cfg`` -> ``trainer`` ...),
or any local name / ``self`` attribute / method result assigned from one (``m = steps.mfd``,
``tc = OmegaConf.to_container(trainer_cfg)``, ``self.tc = trainer_cfg``). A non-constant key reads ``*``.
"""

from __future__ import annotations

import ast
import functools
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# every option of every config group, experiments included
OPTIONS = [(g.name, o.stem) for g in sorted(CONF.iterdir()) if g.is_dir() and g.name != "hydra"
           for o in sorted(g.glob("*.yaml"))]
# options that leave data.path ??? for the user
NEEDS_PATH = {"alpaca_json", "jsonl", "hf_dataset", "llama2_7b_alpaca", "llama2_13b_alpaca", "qwen1_5_7b_alpaca"}


@functools.cache
def composed_every_option() -> list[tuple[str, str, object, dict]]:
    """(group, option, the composed config with its hydra node, the job config as unresolved plain data),
    composed as a run composes them (HydraConfig is set per config by whoever resolves ${hydra:...})."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import tapir_exp.config  # noqa: F401 - registers the tapir_* resolvers

    old = os.environ.get("TAPIR_ROOT")
    os.environ["TAPIR_ROOT"] = tempfile.mkdtemp(prefix="tapir-root-")
    try:
        out = []
        for group, option in OPTIONS:
            extra = ["data.path=pool.jsonl"] if option in NEEDS_PATH else []
            GlobalHydra.instance().clear()
            with initialize_config_dir(str(CONF), version_base="1.3"):
                cfg = compose("tapir", overrides=[f"{group}={option}", *extra], return_hydra_config=True)
            job = OmegaConf.to_container(cfg, resolve=False)
            job.pop("hydra")
            out.append((group, option, cfg, job))
        return out
    finally:
        GlobalHydra.instance().clear()
        if old is None:
            os.environ.pop("TAPIR_ROOT")
        else:
            os.environ["TAPIR_ROOT"] = old

# Parameter names that hold a config node, by that node's path ("" = the job config).
PARAM_ROOTS = {"cfg": "", "data_cfg": "data", "trainer_cfg": "trainer", "tc": "trainer", "student_cfg": "student",
               "oracle_cfg": "oracle", "cur": "curriculum", "ds": "trainer.deepspeed", "lora": "student.lora",
               "ae_cfg": "eval.alpaca_eval", "mt_cfg": "eval.mt_bench", "lc_cfg": "eval.alpaca_eval.lc"}
# Where a name means something else in one module (path relative to the package).
MODULE_ROOTS = {"llm/oracle.py": {"cfg": "oracle"}, "student/train.py": {"trainer_cfg": "trainer"}}
# Calls that hand their first argument's node on unchanged (a container copy is still the same keys).
PASS_THROUGH = {"to_container", "dict", "list", "OmegaConf.to_container", "OmegaConf.create", "copy", "deepcopy"}


def _call_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_call_name(node.value)}.{node.attr}"
    return ""


class _Scope:
    def __init__(self, names: dict[str, str], attrs: dict[str, str], methods: dict[str, str]):
        self.names, self.attrs, self.methods = names, attrs, methods


class Reader:
    def __init__(self) -> None:
        self.reads: dict[str, set[str]] = {}  # path -> where ("file:line")

    def path_of(self, node: ast.AST, scope: _Scope) -> str | None:
        """The config path an expression holds, or None."""
        if isinstance(node, ast.Name):
            return scope.names.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in scope.attrs:
                return scope.attrs[node.attr]
            base = self.path_of(node.value, scope)
            return None if base is None else _join(base, node.attr)
        if isinstance(node, ast.Subscript):
            base = self.path_of(node.value, scope)
            if base is None:
                return None
            key = node.slice
            return _join(base, key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else "*")
        if isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Attribute) and fn.attr == "get" and node.args:
                base = self.path_of(fn.value, scope)
                if base is not None:
                    key = node.args[0]
                    return _join(base, key.value if isinstance(key, ast.Constant) and isinstance(key.value, str)
                                 else "*")
            if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) and fn.value.id == "self" \
                    and fn.attr in scope.methods:
                return scope.methods[fn.attr]
            if _call_name(fn) in PASS_THROUGH and node.args:
                return self.path_of(node.args[0], scope)
            return None
        if isinstance(node, ast.BoolOp):  # `cfg.x or {}`
            return next((p for p in (self.path_of(v, scope) for v in node.values) if p is not None), None)
        if isinstance(node, ast.IfExp):
            return self.path_of(node.body, scope) or self.path_of(node.orelse, scope)
        return None

    def record(self, node: ast.AST, scope: _Scope, where: str) -> None:
        """Every config path read anywhere inside ``node``."""
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute | ast.Subscript | ast.Call):
                p = self.path_of(sub, scope)
                if p:
                    self.reads.setdefault(p, set()).add(f"{where}:{sub.lineno}")


def _join(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _assign_targets(stmt: ast.AST) -> list[tuple[ast.AST, ast.AST]]:
    """(target, value) pairs of an assignment, tuple assignments split."""
    if isinstance(stmt, ast.Assign):
        pairs = []
        for t in stmt.targets:
            if isinstance(t, ast.Tuple) and isinstance(stmt.value, ast.Tuple) and len(t.elts) == len(stmt.value.elts):
                pairs += list(zip(t.elts, stmt.value.elts, strict=True))
            else:
                pairs.append((t, stmt.value))
        return pairs
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        return [(stmt.target, stmt.value)]
    return []


def _functions(tree: ast.AST):
    """(class node or None, function node) for every function, methods with their class."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield node, item
    classes_methods = {id(i) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for i in c.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and id(node) not in classes_methods:
            yield None, node


def read_paths(package: Path) -> dict[str, set[str]]:
    reader = Reader()
    for file in sorted(package.rglob("*.py")):
        rel = str(file.relative_to(package))
        if rel.startswith("testing/") or rel == "config_schema.py":  # the schema checks keys, it does not use them
            continue
        roots = {**PARAM_ROOTS, **MODULE_ROOTS.get(rel, {})}
        tree = ast.parse(file.read_text(encoding="utf-8"))
        funcs = list(_functions(tree))
        class_attrs: dict[int, dict[str, str]] = {}
        class_methods: dict[int, dict[str, str]] = {}
        for _ in range(3):  # self attributes and method results feed each other: iterate to a fixed point
            for cls, fn in funcs:
                attrs = class_attrs.setdefault(id(cls), {})
                methods = class_methods.setdefault(id(cls), {})
                scope = _Scope(_local_names(fn, roots, reader, attrs, methods), attrs, methods)
                for stmt in ast.walk(fn):
                    for target, value in _assign_targets(stmt):
                        p = reader.path_of(value, scope)
                        if p is not None and isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                                and target.value.id == "self":
                            attrs.setdefault(target.attr, p)
                    if isinstance(stmt, ast.Return) and stmt.value is not None and cls is not None:
                        p = reader.path_of(stmt.value, scope)
                        if p is not None:
                            methods.setdefault(fn.name, p)
        for cls, fn in funcs:
            attrs, methods = class_attrs[id(cls)], class_methods[id(cls)]
            scope = _Scope(_local_names(fn, roots, reader, attrs, methods), attrs, methods)
            reader.record(fn, scope, rel)
    return reader.reads


def _local_names(fn: ast.AST, roots: dict[str, str], reader: Reader, attrs: dict[str, str],
                 methods: dict[str, str]) -> dict[str, str]:
    args = fn.args
    names = {a.arg: roots[a.arg] for a in [*args.posonlyargs, *args.args, *args.kwonlyargs] if a.arg in roots}
    scope = _Scope(names, attrs, methods)
    for _ in range(2):  # aliases of aliases (`steps = cfg.steps; m = steps.mfd`)
        for stmt in ast.walk(fn):
            for target, value in _assign_targets(stmt):
                if isinstance(target, ast.Name):
                    p = reader.path_of(value, scope)
                    if p is not None:
                        names[target.id] = p
    return names
