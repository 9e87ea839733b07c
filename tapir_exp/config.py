"""Config helpers: OmegaConf resolvers, the run name, secret redaction and config saving.

Resolvers are registered on import; :mod:`tapir_exp.cli` imports this module before Hydra composes.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from tapir_exp.files import atomic_write_text

REDACTED = "***REDACTED***"
# Keys whose values are secrets wherever they appear in a config.
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization|bearer)$", re.IGNORECASE)
# ... except a tokenizer's special tokens (`student.init.pad_token: "<pad>"`), which name what a run trains.
_SPECIAL_TOKEN_KEY = re.compile(r"(^|[^a-z])(pad|eos|bos|unk|sep|cls|mask)_token$", re.IGNORECASE)
# Values that look like secrets even under an innocent key (OpenAI / W&B / HF style keys).
_SECRET_VALUE = re.compile(r"^(sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{8,}|[0-9a-f]{40})$")
_NOT_SECRET = {None, "", "EMPTY", "null", "none", REDACTED}


def run_name_from_overrides(override_dirname: str, max_len: int = 80) -> str:
    """A filesystem-safe run name from Hydra's ``override_dirname``; ``default`` when empty.

    Long names are cut and suffixed with a hash of the full string, so distinct overrides never collide.
    """
    override_dirname = _drop_unnamed_overrides(override_dirname)
    if not override_dirname:
        return "default"
    safe = re.sub(r"[^A-Za-z0-9=,._+\-]", "_", override_dirname)
    if len(safe) <= max_len:
        return safe
    digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:10]
    return f"{safe[: max_len - 11]}-{digest}"


# What does not name a run - the one list (Hydra's override_dirname is not filtered; the run name is). Overrides
# that change speed, bookkeeping, credentials or where things go, not results, so that e.g. raising
# oracle.limits.concurrency or logger=csv resumes the same run (and `mode=plan plan.hard_fraction=X` plans it).
# A step's signature leaves out the same oracle backend keys (``naming_items``). Entries match a key and
# everything under it; ``*`` matches one key.
NOT_NAMING_A_RUN = (
    "mode", "plan", "name", "logger", "hydra", "paths", "eval.model",
    "oracle.limits", "oracle.progress", "oracle.cache",
    "oracle.backends.*.api_key", "oracle.backends.*.organization", "oracle.backends.*.cache_dir",
    "oracle.backends.*.batch_size", "oracle.backends.*.device", "student.init.cache_dir", "share_generations",
)


def secret_key(key: str) -> bool:
    """Whether values under ``key`` (a name, or a dotted path) are credentials wherever they appear."""
    key = str(key)
    return bool(_SECRET_KEY.search(key)) and not _SPECIAL_TOKEN_KEY.search(key)


def names_run(key: str) -> bool:
    """Whether an override of ``key`` (``a.b.c``, or a group ``a/b``) names a run; secrets never do."""
    key = key.lstrip("+~")
    if secret_key(key):
        return False
    parts = re.split(r"[./]", key)
    for entry in NOT_NAMING_A_RUN:
        want = entry.split(".")
        if len(parts) >= len(want) and all(w in ("*", p) for w, p in zip(want, parts, strict=False)):
            return False
    return True


def naming_items(prefix: str, node: dict[str, Any]) -> dict[str, Any]:
    """The items of the config mapping at ``prefix`` whose keys name a run: what a step's signature keeps of,
    e.g., an oracle backend (``names_run`` decides, so the signature and the run name follow one list)."""
    return {k: v for k, v in node.items() if names_run(f"{prefix}.{k}")}


def naming_tree(prefix: str, node: Any) -> Any:
    """:func:`naming_items` at every depth: the config subtree at ``prefix`` without the keys that do not
    name a run (e.g. ``student.init.cache_dir``: where the base student is cached, not what it is)."""
    if not isinstance(node, dict):
        return node
    return {k: naming_tree(f"{prefix}.{k}", v) for k, v in naming_items(prefix, node).items()}


def _drop_unnamed_overrides(dirname: str) -> str:
    kept = [item for item in re.split(r",(?=[+~]?[A-Za-z_][\w./@-]*=)", dirname) if names_run(item.split("=", 1)[0])]
    return ",".join(kept)


def resource_path(rel: str) -> str:
    """Absolute path of a file shipped in ``tapir_exp/resources``."""
    return str(resources.files("tapir_exp").joinpath("resources", rel))


def register_resolvers() -> None:
    for name, fn in {
        "tapir_run_name": run_name_from_overrides,
        "tapir_resource": resource_path,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def is_secret(key: str, value: Any) -> bool:
    if isinstance(value, str) and value in _NOT_SECRET:
        return False
    if value is None:
        return False
    if secret_key(key):
        return True
    return isinstance(value, str) and bool(_SECRET_VALUE.match(value))


def redact(obj: Any) -> Any:
    """A copy of a plain container with every secret value replaced by ``***REDACTED***``."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret(k, v) and not isinstance(v, dict | list) else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and _SECRET_VALUE.match(obj):
        return REDACTED
    return obj


def to_container(cfg: DictConfig | ListConfig | dict, resolve: bool = True) -> Any:
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=resolve, throw_on_missing=False)
    return cfg


def redacted_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data with secrets removed: what is saved and sent to loggers."""
    return redact(to_container(cfg, resolve=True))


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved, redacted config as YAML."""
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(redacted_container(cfg))))


def redact_hydra_outputs(run_dir: str | Path) -> None:
    """Hydra saves ``.hydra/{config,overrides,hydra}.yaml`` itself; a key given on the command line
    (``oracle.backends.openai.api_key=sk-...``) would land there verbatim, so rewrite them redacted."""
    hydra_dir = Path(run_dir) / ".hydra"
    if not hydra_dir.is_dir():
        return
    for path in hydra_dir.glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        new = redact_text(text)
        if new != text:
            atomic_write_text(path, new)


# `key=value` (an override) or `key: value` (YAML) in Hydra's own files. The key decides, by the rule the
# structured config uses (`secret_key`): `max_new_tokens=12` is a setting, `hf_token=...` a credential. A match
# consumes only the key and its separator, so a value that holds overrides itself (`override_dirname: a=1,
# b.api_key=...`, a path named after them) is searched too. A YAML value is quoted or runs to the end of its
# line (`authorization: Bearer x`) and is replaced by a quoted REDACTED: a bare `***...` is a YAML alias.
_INLINE_KEY = re.compile(r"[+~]*[A-Za-z_][\w.\-/]*[ \t]*[=:][ \t]*")
_QUOTED = r"'[^'\n]*'|\"[^\"\n]*\""
_INLINE_VALUE = {"=": re.compile(rf"{_QUOTED}|[^\s,'\"}}\]]+"), ":": re.compile(rf"{_QUOTED}|[^\n,}}\]]*[^\s,}}\]]")}


def redact_text(text: str) -> str:
    out, pos = [], 0
    for m in _INLINE_KEY.finditer(text):
        if m.start() < pos:
            continue
        sep = "=" if "=" in m.group(0) else ":"
        key = m.group(0).rstrip("=: \t").lstrip("+~")
        value = _INLINE_VALUE[sep].match(text, m.end())
        bare = value.group(0).strip("'\"") if value else None
        if value and secret_key(key) and bare not in _NOT_SECRET and not bare.startswith("${"):
            out += [text[pos:m.end()], REDACTED if sep == "=" and value.group(0)[0] not in "'\"" else f"'{REDACTED}'"]
            pos = value.end()
    text = "".join(out) + text[pos:]
    return re.sub(r"sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{8,}", REDACTED, text)


def adopt_hydra_output_dir(cfg: DictConfig) -> None:
    """One run directory. Hydra's output directory is ``paths.run_dir`` unless something moved it - a
    ``hydra.run.dir=X`` / ``hydra.sweep.dir=X`` on the command line (a Hydra user's habit) or a launcher - and
    then X becomes the run directory for everything (artifacts, ``.hydra/``, ``tapir.log``), not only for
    Hydra's own files. Giving both ``paths.run_dir`` and a different Hydra directory is refused."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    hydra_dir = hc.runtime.output_dir
    if not hydra_dir or Path(hydra_dir).resolve() == Path(cfg.paths.run_dir).resolve():
        return
    if any(o.split("=", 1)[0].lstrip("+~") == "paths.run_dir" for o in hc.overrides.task):
        from tapir_exp.errors import ConfigError

        raise ConfigError("paths.run_dir", f"got {cfg.paths.run_dir} and a different Hydra output directory "
                                           f"{hydra_dir} (hydra.run.dir / hydra.sweep.dir); set only paths.run_dir")
    with open_dict(cfg):
        cfg.paths.run_dir = str(hydra_dir)


def packaged_dir(name: str) -> Path:
    """``conf`` or ``launchers``: top-level folders of the repository that ship inside the package. In the
    source tree ``tapir_exp/<name>`` is a symlink to ``../<name>``; a built wheel holds the files themselves
    (package data, pyproject.toml), so editable and wheel installs find them the same way."""
    return Path(str(resources.files("tapir_exp").joinpath(name)))
