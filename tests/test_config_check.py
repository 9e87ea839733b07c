"""The config is checked before any paid work: a corpus of bad overrides, tried as a user would through the real
CLI in mode=plan, mode=run and mode=eval, each refused with one line naming the key, what it got and what it
expects - with no request sent to the (fake, real-HTTP) oracle, no model loaded and no run directory made."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from tapir_exp.config import NOT_NAMING_A_RUN, names_run
from tapir_exp.config_schema import PRECISIONS, RULES, STRATEGIES, check_config
from tapir_exp.errors import ConfigError
from tapir_exp.testing.openai_server import FakeOpenAIServer
from tests.support_config import composed_every_option

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# override(s) -> the line the user must see (after "tapir: error: config ")
BAD = {
    # the examples
    "steps.mfd.delta=abc": "'steps.mfd.delta': got 'abc' (str), expected a number",
    "curriculum.rounds=-1": "'curriculum.rounds': got -1, expected an integer >= 0",
    "oracle.limits.concurrency=0": "'oracle.limits.concurrency': got 0, expected an integer >= 1",
    "student.lora.enabled=maybe": "'student.lora.enabled': got 'maybe' (str), expected true or false",
    "eval.alpaca_eval.path=/no/such/alpaca_eval.json":
        "'eval.alpaca_eval.path': got '/no/such/alpaca_eval.json' (str), expected an existing file",
    "data.pool_size=0": "'data.pool_size': got 0, expected null or an integer >= 1",
    "steps.mfd.format=triple": "'steps.mfd.format': got 'triple' (str), expected one of: pair, single",
    # one (or more) per config group
    "seed=1.5": "'seed': got 1.5, expected an integer",
    "steps.failure_budget=2": "'steps.failure_budget': got 2, expected a number >= 0 and <= 1",
    "steps.refine.default_style=poetic":
        "'steps.refine.default_style': got 'poetic' (str), expected null or one of: code, concise, stepwise",
    "data.on_error=ignore": "'data.on_error': got 'ignore' (str), expected one of: raise, skip",
    "tasks.fallback=Nonsense": "'tasks.fallback': got 'Nonsense' (str), expected one of tasks.labels",
    "curriculum.alpha_end=1.5": "'curriculum.alpha_end': got 1.5, expected a number >= 0 and <= 1",
    "curriculum.size=[4]": "'curriculum.size': got 1 value(s), expected one per round (curriculum.rounds=2)",
    "student.max_length=0": "'student.max_length': got 0, expected an integer >= 1",
    "student.chat_template=vicuna": "'student.chat_template': got 'vicuna' (str), expected null or one of: chatml, llama2",
    "oracle.roles.judge.backend=gpt": "'oracle.roles.judge.backend': got 'gpt' (str), expected a backend of "
                                      "oracle.backends (openai)",
    "oracle.roles.teacher.max_tokens=-5": "'oracle.roles.teacher.max_tokens': got -5, expected an integer >= 1",
    "trainer.lr=0": "'trainer.lr': got 0, expected a number > 0",
    "trainer.strategy=horovod": "'trainer.strategy': got 'horovod' (str), expected one of: " + ", ".join(STRATEGIES),
    "generation.max_new_tokens=lots": "'generation.max_new_tokens': got 'lots' (str), expected an integer >= 1",
    "eval.mt_bench.enabled=yes": "'eval.mt_bench.enabled': got 'yes' (str), expected true or false",
    "+logger.mode=sometimes": "'logger.mode': got 'sometimes' (str), expected null or one of: online, offline, disabled",
    "paths.cache_dir=''": "'paths.cache_dir': got '' (str), expected a non-empty string",
    # a node deleted or replaced by a value
    "~steps.mfd": "'steps.mfd.delta': missing, expected a number",
    "steps.refine=5": "'steps.refine': got 5, expected a mapping (with steps.refine.enabled)",
}


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "TAPIR_ROOT": str(tmp_path), "WANDB_MODE": "offline",
            "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "test-key"}


def tapir(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tapir_exp.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=_env(cwd), timeout=300)


def _paid_nothing(root: Path, server: FakeOpenAIServer) -> None:
    assert server.request_count == 0
    # no run directory (so no config snapshot, logger, cache, converted model or artifact) was made
    assert sorted(p.name for p in root.iterdir()) == [], sorted(root.rglob("*"))


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def _oracle(server: FakeOpenAIServer) -> list[str]:
    """The OpenAI oracle pointed at the fake server: the first thing a real run does is pay it."""
    return ["oracle=openai", f"oracle.backends.openai.base_url={server.base_url}",
            "oracle.backends.openai.model=fake-model", "oracle.limits.max_retries=0", "debug=fast"]


@pytest.mark.parametrize("mode", ["plan", "run"])
@pytest.mark.parametrize("override", sorted(BAD))
def test_bad_value_refused_before_anything_is_paid(override, mode, tmp_path, server):
    r = tapir([f"mode={mode}", *_oracle(server), override], tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and lines == [f"tapir: error: config {BAD[override]}"], r.stderr
    _paid_nothing(tmp_path, server)


def test_eval_mode_checks_too(tmp_path, server):
    r = tapir(["mode=eval", *_oracle(server), f"eval.model={tmp_path}/no_model"], tmp_path)
    assert r.stderr.strip() == (f"tapir: error: config 'eval.model': got '{tmp_path}/no_model' (str), "
                                "expected null or an existing directory")
    r = tapir(["mode=eval", *_oracle(server), "eval.alpaca_eval.lc.cv_folds=1"], tmp_path)
    assert r.stderr.strip() == "tapir: error: config 'eval.alpaca_eval.lc.cv_folds': got 1, expected an integer >= 2"
    _paid_nothing(tmp_path, server)


def test_missing_mandatory_value_is_named(tmp_path, server):
    r = tapir(["mode=plan", "experiment=llama2_7b_alpaca"], tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == ("tapir: error: config 'data.path': no value given (??? in the "
                                                      "config): set it on the command line")
    _paid_nothing(tmp_path, server)


def test_multirun_job_is_checked(tmp_path, server):
    """Every job of a sweep is checked in the job itself (the sweep's base config cannot know its values)."""
    r = tapir(["--multirun", "mode=run", *_oracle(server), "steps.mfd.delta=abc"], tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == \
        "tapir: error: config 'steps.mfd.delta': got 'abc' (str), expected a number"
    # Hydra wrote its own files (multirun.yaml, the job's .hydra/ and tapir.log) before the job ran; the job none
    written = [p for p in tmp_path.rglob("*") if p.is_file() and ".hydra" not in p.parts
               and p.name not in ("tapir.log", "multirun.yaml")]
    assert server.request_count == 0 and written == []


def test_a_good_config_does_pay_the_server(tmp_path):
    """The control for the tests above: the same command with a good value reaches the fake oracle at once
    (here every request fails, so the run stops at the teacher step's failure budget)."""
    with FakeOpenAIServer(fault_when=lambda body: "500") as srv:
        r = tapir(["mode=run", *_oracle(srv), "steps.mfd.delta=1.0"], tmp_path)
        assert r.returncode == 2 and "failed" in r.stderr.splitlines()[-1], r.stderr
        assert srv.request_count > 0
    assert list(tmp_path.rglob("config.yaml"))


def test_hydra_run_dir_is_the_run_directory(tmp_path):
    """`hydra.run.dir=X` moves the whole run (artifacts, config, Hydra's files), not only Hydra's files."""
    x = tmp_path / "elsewhere"
    r = tapir(["mode=plan", "logger=none", f"hydra.run.dir={x}"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert {p.name for p in x.iterdir()} >= {".hydra", "tapir.log", "plan.json", "config.plan.yaml"}
    assert OmegaConf.load(x / "config.plan.yaml").paths.run_dir == str(x)
    assert not (tmp_path / "outputs").exists()
    r = tapir(["mode=plan", "logger=none", f"hydra.run.dir={x}", f"paths.run_dir={tmp_path}/other"], tmp_path)
    assert r.returncode == 2 and r.stderr.strip().startswith("tapir: error: config 'paths.run_dir': got ")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "other").exists()
    # multirun: hydra.sweep.dir=Y puts each job's whole run under Y/<run name>
    y = tmp_path / "sweep"
    r = tapir(["-m", "mode=plan", "logger=none", f"hydra.sweep.dir={y}", "seed=3"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (y / "seed=3").iterdir()} >= {".hydra", "tapir.log", "plan.json", "config.plan.yaml"}
    assert OmegaConf.load(y / "seed=3" / "config.plan.yaml").paths.run_dir == str(y / "seed=3")
    assert not (tmp_path / "outputs").exists()


def test_a_plan_in_a_runs_directory_keeps_the_runs_config(tmp_path):
    """`mode` does not name a run, so `tapir mode=plan` after `tapir` plans in the run's own directory. The
    snapshot the run's outputs came from (config.yaml) must survive it; the plan's goes beside it."""
    x = tmp_path / "run"
    x.mkdir()
    run_snapshot = "mode: run\nseed: 0\n# the run's own snapshot\n"
    (x / "config.yaml").write_text(run_snapshot)
    r = tapir(["mode=plan", "logger=none", f"hydra.run.dir={x}"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (x / "config.yaml").read_text() == run_snapshot
    assert OmegaConf.load(x / "config.plan.yaml").mode == "plan"


# --------------------------------------------------------------------------- in-process: the table itself
def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("tapir", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(scope="module")
def every_option(tmp_path_factory):
    """Every option of every group (experiments included), composed once: (group, option, config, container)."""
    return composed_every_option()


def test_every_shipped_option_and_experiment_passes(every_option):
    for group, option, cfg, _ in every_option:
        HydraConfig.instance().set_config(cfg)
        try:
            check_config(cfg)
        except ConfigError as e:
            raise AssertionError(f"{group}={option}: {e}") from None


def test_every_required_rule_names_a_shipped_key(tmp_path, monkeypatch):
    """A required rule for a key no option defines would refuse every run; a typo in the table shows here."""
    monkeypatch.setenv("TAPIR_ROOT", str(tmp_path))
    cfg = OmegaConf.to_container(_compose(["data.path=x"]), resolve=False)
    for rule in RULES:
        if rule.required and "*" not in rule.key:
            node = cfg
            for part in rule.key.split("."):
                assert isinstance(node, dict) and part in node, rule.key
                node = node[part]


def test_check_can_refuse_without_hydra():
    with pytest.raises(ConfigError, match=r"^config 'curriculum.rounds': got 'three' \(str\), expected an integer"):
        check_config({"name": "x", "seed": 1, "mode": "plan", "curriculum": {"rounds": "three"}},
                     rules=tuple(r for r in RULES if r.key.startswith(("name", "seed", "mode", "curriculum.rounds"))))


def test_choices_match_what_the_code_accepts():
    """STRATEGIES = what build_strategy takes; PRECISIONS = Lightning's own list."""
    from lightning.fabric.connector import _PRECISION_INPUT

    from tapir_exp.student.strategies import build_strategy

    def flatten(t):
        return [x for a in typing.get_args(t) for x in (flatten(a) if typing.get_args(a) else [a])]

    assert set(PRECISIONS) == {str(p) for p in flatten(_PRECISION_INPUT)}
    for name in STRATEGIES:
        if name != "deepspeed":  # DeepSpeedStrategy itself needs CUDA here
            assert build_strategy(OmegaConf.create({"strategy": name})) == name
    with pytest.raises(ConfigError):
        build_strategy(OmegaConf.create({"strategy": "horovod"}))


def test_one_list_of_what_does_not_name_a_run(tmp_path, every_option):
    """Every entry of the list names a key some option defines (an entry for a key that does not exist
    protects nothing); a result-changing key names the run, a speed/bookkeeping one does not."""
    defined: set[str] = set()

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                defined.add(f"{prefix}{k}")
                walk(v, f"{prefix}{k}.")

    for _, _, cfg, _ in every_option:
        walk(OmegaConf.to_container(cfg, resolve=False), "")  # hydra's node too: `hydra` is on the list
    for entry in NOT_NAMING_A_RUN:
        pattern = entry.replace(".", r"\.").replace("*", r"[^.]+")
        assert any(re.fullmatch(pattern, k) for k in defined), entry
    assert not names_run("oracle.limits.concurrency") and not names_run("hydra/launcher")
    assert not names_run("oracle.backends.openai.api_key") and not names_run("oracle.backends.local.batch_size")
    assert not names_run("+oracle.backends.openai.my_token")  # secrets never name a run
    assert names_run("steps.mfd.delta") and names_run("oracle.backends.openai.model") and names_run("data")
    assert names_run("modes.x") and names_run("names")  # an entry matches whole keys only
    env = {**os.environ, "TAPIR_ROOT": str(tmp_path), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "tapir_exp.cli", "oracle.limits.concurrency=3", "logger=csv",
                        "seed=7", "--cfg", "job", "--resolve"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert OmegaConf.create(r.stdout).run_name == "seed=7", r.stderr


def test_run_name_and_step_signatures_follow_the_same_list(every_option):
    """The run name, a step's oracle signature and Hydra's override_dirname agree on what names a run: an
    override the list leaves out changes neither the run name nor any role's signature, one it keeps changes
    both, and Hydra keeps no list of its own (no exclude_keys)."""
    from tapir_exp.config import run_name_from_overrides
    from tapir_exp.pipeline import role_signature

    seen, oracles = 0, set()
    for _, _, cfg, job in every_option:
        assert not cfg.hydra.job.config.override_dirname.get("exclude_keys")
        if repr(job["oracle"]) in oracles:  # most options share the default oracle: check each one once
            continue
        oracles.add(repr(job["oracle"]))
        for name, backend in (cfg.oracle.backends or {}).items():
            roles = [r for r in cfg.oracle.roles if cfg.oracle.roles[r].backend == name]
            for key in backend or {}:
                override = f"oracle.backends.{name}.{key}"
                changed = cfg.oracle.copy()
                changed.backends[name][key] = "changed-value"
                same_sig = all(role_signature(changed, r) == role_signature(cfg.oracle, r) for r in roles)
                unnamed = run_name_from_overrides(f"{override}=changed-value") == "default"
                assert same_sig == unnamed == (not names_run(override)), override
                seen += unnamed
    assert seen >= 5  # api_key, organization, cache_dir, batch_size, device somewhere among the options
