"""Every config option composes, every `_target_` resolves, run names come from overrides, secrets are redacted."""

from __future__ import annotations

import os
import re
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


_KEY = re.compile(r"^(\s*)([A-Za-z_][\w.\-/ ]*?):(?:\s|$)")


def _commented_keys(path: Path) -> list[tuple[str, bool]]:
    """(dotted key path, commented) for every setting (leaf key) of a config file. A setting is commented by a
    comment on its line or right above it, or by one on its direct parent (``ratios:`` covers its labels);
    a comment further up (``steps:``) covers nothing. Keys of a group option sit under the group
    (``conf/curriculum/x.yaml: size`` is ``curriculum.size``) unless the file is ``@package _global_``."""
    text = path.read_text()
    glob = "@package _global_" in text or path.parent == CONF
    prefix = [] if glob else list(path.relative_to(CONF).parent.parts)
    entries, stack, above = [], [], False  # entries: [path, indent, own comment, parent's comment]
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above = True
            continue
        m = _KEY.match(line)
        if m and not stripped.startswith("- "):
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            own = above or "#" in line.split(":", 1)[1]
            parent = stack[-1][2] if stack else False
            stack.append((indent, m.group(2), own))
            entries.append((".".join(prefix + [k for _, k, _ in stack]), indent, own, parent))
        above = False
    leaves = [e for k, e in enumerate(entries) if k + 1 == len(entries) or entries[k + 1][1] <= e[1]]
    return [(key, own or parent) for key, _, own, parent in leaves]


# The method's settings: what a TAPIR run is (the steps, the curriculum, the task ratios, how the judge decides
# "hard") and the ablations over it. Each such key must say what it does in at least one config file.
METHOD_KEYS = ("steps.", "curriculum.", "tasks.", "oracle.mfd_")


def test_every_method_setting_is_commented():
    files = [f for f in CONF.rglob("*.yaml") if "hydra" not in f.relative_to(CONF).parts]
    files += list((REPO / "sweeps" / "ablation").glob("*.yaml"))
    seen: dict[str, bool] = {}
    for f in files:
        for key, commented in _commented_keys(f):
            if key.startswith(METHOD_KEYS):
                seen[key] = seen.get(key, False) or commented
    assert {"steps.mfd.compare", "curriculum.single_round", "tasks.ratios.Math"} <= set(seen)  # it sees the tree
    missing = sorted(k for k, commented in seen.items() if not commented)
    assert not missing, f"settings without a comment in any config file: {missing}"


def test_every_config_file_opens_with_a_description():
    for f in list(CONF.rglob("*.yaml")) + list((REPO / "sweeps").rglob("*.yaml")):
        lines = [ln for ln in f.read_text().splitlines() if ln.strip() and "@package" not in ln]
        assert lines and lines[0].startswith("#"), f"{f} does not open with a comment saying what it is"


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


PAPER = {"llama2_7b_alpaca": "llama2_7b", "llama2_13b_alpaca": "llama2_13b", "qwen1_5_7b_alpaca": "qwen1_5_7b"}


def test_paper_experiments_share_one_base_and_differ_in_the_student_only():
    """The paper experiments compose base/paper_alpaca.yaml (not copies of it): with the student and the name
    removed they are the same config, and the base alone is refused (it names no student)."""
    rest = []
    for exp, student in PAPER.items():
        cfg = _compose([f"experiment={exp}", "data.path=pool.jsonl"])
        assert cfg.hydra.runtime.choices.student == student and cfg.name == exp
        assert "base/paper_alpaca" in (CONF / "experiment" / f"{exp}.yaml").read_text()
        job = OmegaConf.to_container(cfg, resolve=False)
        for key in ("hydra", "student", "name"):
            job.pop(key)
        rest.append(job)
    assert rest[0] == rest[1] == rest[2]
    assert rest[0]["trainer"]["strategy"] == "deepspeed" and rest[0]["curriculum"]["rounds"] == 3
    with pytest.raises(Exception, match="You must specify 'student'"):
        _compose(["experiment=base/paper_alpaca"])


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


def test_hydras_own_files_lose_the_secrets_given_on_the_command_line_and_keep_every_setting(tmp_path):
    # Hydra writes .hydra/{overrides,hydra,config}.yaml itself, with the command line verbatim; the run rewrites
    # them redacted. Only credentials go: `generation.max_new_tokens=12` is a setting (the report names a sweep's
    # settings from overrides.yaml), and it used to be redacted as if "tokens" were a token.
    import subprocess
    import sys

    import yaml

    key, hf = "sk-abcdefSECRET0123", "hfsecretvalue42"
    r = subprocess.run([sys.executable, "-m", "tapir_exp.cli", "mode=plan", "oracle=openai", "logger=none",
                        f"oracle.backends.openai.api_key={key}", "generation.max_new_tokens=12",
                        f"+student.init.hf_token={hf}"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "TAPIR_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = [p.parent for p in (tmp_path / "outputs").glob("*/*/.hydra")]
    for f in run.rglob("*"):
        if f.is_file():
            assert key not in f.read_text() and hf not in f.read_text(), f
    overrides = yaml.safe_load((run / ".hydra/overrides.yaml").read_text())
    assert "generation.max_new_tokens=12" in overrides
    assert {"oracle.backends.openai.api_key=***REDACTED***", "+student.init.hf_token=***REDACTED***"} <= set(overrides)
    saved = yaml.safe_load((run / ".hydra/config.yaml").read_text())
    assert saved["generation"]["max_new_tokens"] == 12 and saved["oracle"]["backends"]["openai"]["api_key"] == "***REDACTED***"
    assert saved["oracle"]["roles"]["teacher"]["max_tokens"] > 0
    runtime = yaml.safe_load((run / ".hydra/hydra.yaml").read_text())["hydra"]["runtime"]
    assert runtime["output_dir"] == str(run)  # a path named after the overrides stays the path


def test_inline_redaction_decides_by_the_key():
    from tapir_exp.config import redact_text

    text = ("override_dirname: a=1,b.api_key=abc123,generation.max_new_tokens=12\n"
            "pad_token: <pad>\nhf_token: xyz\nauthorization: Bearer q1w2e3\n"
            "api_key: ${oc.env:OPENAI_API_KEY,EMPTY}\nWANDB_API_KEY=w4nd8\nsecret:\n  nested: kept\n"
            "password: 'p a s s'\n- +x.token=\"t0k\"\n")
    assert redact_text(text) == (
        "override_dirname: a=1,b.api_key=***REDACTED***,generation.max_new_tokens=12\n"
        "pad_token: <pad>\nhf_token: '***REDACTED***'\nauthorization: '***REDACTED***'\n"
        "api_key: ${oc.env:OPENAI_API_KEY,EMPTY}\nWANDB_API_KEY=***REDACTED***\nsecret:\n  nested: kept\n"
        "password: '***REDACTED***'\n- +x.token='***REDACTED***'\n")


def test_tokenizer_special_tokens_are_settings_not_secrets(tmp_path, monkeypatch):
    # "token" ends both a credential's key (hf_token) and a tokenizer setting's (pad_token): only the first is
    # redacted on disk and left out of the run name
    from tapir_exp.config import names_run, run_name_from_overrides
    from tapir_exp.task import setup_run_dir

    monkeypatch.setenv("TAPIR_ROOT", str(tmp_path))
    full = _compose([])
    cfg = OmegaConf.masked_copy(full, [k for k in full if k != "hydra"])
    OmegaConf.set_struct(cfg, False)
    cfg.paths.run_dir = str(tmp_path / "run")
    cfg.student.init.pad_token = "<|pad|>"
    cfg.student.init.hf_token = "not-a-real-token-123"
    saved = (setup_run_dir(cfg) / "config.yaml").read_text()
    assert "<|pad|>" in saved and "not-a-real-token-123" not in saved
    assert names_run("student.init.pad_token") and names_run("+student.init.eos_token")
    assert not names_run("student.init.hf_token") and not names_run("oracle.backends.openai.api_key")
    assert "pad_token" in run_name_from_overrides("student.init.pad_token=x,student.init.hf_token=y")
    assert "hf_token" not in run_name_from_overrides("student.init.pad_token=x,student.init.hf_token=y")
