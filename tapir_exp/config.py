"""Config helpers: OmegaConf resolvers, the run name, secret redaction and config saving.

Resolvers are registered on import; :mod:`tapir_exp.cli` imports this module before Hydra composes.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from tapir_exp.store import atomic_write_text

REDACTED = "***REDACTED***"
# Keys whose values are secrets wherever they appear in a config.
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization|bearer)$", re.IGNORECASE)
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


# Overrides that change speed, bookkeeping or credentials but not results never name a run (so e.g. raising
# oracle.limits.concurrency resumes the same run), and a secret must never become a directory name.
_UNNAMED_PREFIXES = ("oracle.limits.", "oracle.progress", "oracle.cache.", "hydra.", "paths.", "eval.model")


def _drop_unnamed_overrides(dirname: str) -> str:
    kept = []
    for item in re.split(r",(?=[+~]?[A-Za-z_][\w./@-]*=)", dirname):
        key = item.split("=", 1)[0].lstrip("+~")
        if key.startswith(_UNNAMED_PREFIXES) or _SECRET_KEY.search(key):
            continue
        kept.append(item)
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
    if _SECRET_KEY.search(str(key)):
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
        new = _redact_text(text)
        if new != text:
            atomic_write_text(path, new)


_INLINE = re.compile(r"((?:api[_-]?key|token|secret|password)[A-Za-z_]*\s*[=:]\s*)([^\s,'\"}\]]+)", re.IGNORECASE)


def _redact_text(text: str) -> str:
    def sub(m: re.Match) -> str:
        value = m.group(2)
        if value in _NOT_SECRET or value.startswith("${"):
            return m.group(0)
        return m.group(1) + REDACTED

    text = _INLINE.sub(sub, text)
    return re.sub(r"sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{8,}", REDACTED, text)
