"""Every config option composes, every `_target_` resolves, run names come from overrides, secrets are redacted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import OmegaConf

import tapir_exp.config  # noqa: F401 - registers the tapir_* resolvers

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONF.iterdir()
          if g.is_dir() and g.name not in ("hydra",)}
OPTIONS = [(g, o) for g, opts in sorted(GROUPS.items()) for o in opts]


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("tapir", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve as in a real run
    return cfg


def _targets(node, path="") -> list[tuple[str, str]]:
    out = []
    if isinstance(node, dict):
        if "_target_" in node:
            out.append((path, node["_target_"]))
        for k, v in node.items():
            out += _targets(v, f"{path}.{k}")
    return out


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option, monkeypatch, tmp_path):
    monkeypatch.setenv("TAPIR_ROOT", str(tmp_path))
    cfg = _compose([f"{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra")
    for path, target in _targets(container):
        assert get_class(target) is not None, f"{path}: {target}"
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    resolved = OmegaConf.to_container(job, resolve=True)  # every interpolation of the job config resolves
    assert resolved["run_name"] == f"{group}={option}" or group in ("logger", "mode", "paths")


def test_every_yaml_key_is_commented():
    """One comment per option file at least, and no option file without a description line."""
    for f in CONF.rglob("*.yaml"):
        assert "#" in f.read_text(), f"{f} has no comment"


def test_tasks_ratios_cover_labels():
    cfg = _compose([])
    ratios = cfg.tasks.ratios
    assert len(cfg.tasks.labels) == 32 and set(ratios) <= set(cfg.tasks.labels)
    assert sum(ratios.values()) == pytest.approx(1.0, abs=0.02)


def test_experiments_are_deltas_and_compose():
    for f in (CONF / "experiment").glob("*.yaml"):
        assert f.read_text().lstrip().startswith("# @package _global_") or "@package _global_" in f.read_text()
        cfg = _compose([f"experiment={f.stem}"])
        assert cfg.name != "default"


def test_run_name_from_overrides(tmp_path):
    env = {**os.environ, "TAPIR_ROOT": str(tmp_path)}
    import subprocess
    import sys

    def job(*args):
        r = subprocess.run([sys.executable, "-m", "tapir_exp.cli", *args, "--cfg", "job", "--resolve"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return OmegaConf.create(r.stdout)

    assert job().run_name == "default"
    a = job("curriculum.rounds=2", "seed=1")
    b = job("seed=1", "curriculum.rounds=2")
    assert a.run_name == b.run_name != "default" and "rounds=2" in a.run_name
    assert job("logger=csv").run_name == "default"  # the logger does not change results


def test_api_key_never_written(tmp_path, monkeypatch):
    from tapir_exp.task import setup_run_dir

    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("TAPIR_ROOT", str(tmp_path))
    full = _compose(["oracle=openai"])
    cfg = OmegaConf.masked_copy(full, [k for k in full if k != "hydra"])
    OmegaConf.set_struct(cfg, False)
    cfg.paths.run_dir = str(tmp_path / "run")
    assert cfg.oracle.backends.openai.api_key == secret  # it does reach the client ...
    run_dir = setup_run_dir(cfg)
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(errors="ignore"), f  # ... but no file on disk
