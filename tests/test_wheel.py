"""tapir-exp installs as a wheel: conf/ and launchers/ ship inside it, and a user's own experiment files are
found from any folder.

The wheel is built from a copy of the tracked files (`pip wheel --no-deps --no-build-isolation`), installed with
`pip install --no-deps` into a fresh venv (no editable install, no source tree on the path) whose only link to
the test environment is a .pth line naming the test venv's site-packages (torch, hydra ... are not copied).
Every command then runs from an unrelated directory with a bare environment.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))

pytestmark = pytest.mark.slow


def _run(cmd: list, cwd: Path, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(the fresh venv's bin directory, an unrelated working directory, the wheel)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    # a copy of the tracked files (symlinks kept), so the build leaves nothing in the working tree
    subprocess.run(["tar", "--null", "-T", "-", "-cf", str(tmp / "src.tar")], cwd=REPO, input=files, check=True)
    subprocess.run(["tar", "-xf", str(tmp / "src.tar"), "-C", str(src)], check=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", tmp / "dist"],
         cwd=src)
    (wheel,) = (tmp / "dist").glob("tapir_exp-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    (site / "test_venv_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel], cwd=tmp)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return venv / "bin", elsewhere, wheel


def _tapir(installed, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    bin_dir, elsewhere, _ = installed
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(elsewhere), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return _run([bin_dir / "tapir", *args], cwd=cwd or elsewhere, env=env)


def test_wheel_ships_the_config_tree(installed):
    names = set(zipfile.ZipFile(installed[2]).namelist())
    for tree in ("conf", "launchers"):
        shipped = {str(p.relative_to(REPO)) for p in (REPO / tree).rglob("*.yaml")}
        assert shipped and {f"tapir_exp/{p}" for p in shipped} <= names, tree
    assert "hydra_plugins/tapir_exp_searchpath/__init__.py" in names
    # the skills world's shipped base: an installed student=skills_base starts from it, as a source checkout does
    base = {str(p.relative_to(REPO)) for p in (REPO / "tapir_exp/resources/skills_base").rglob("*") if p.is_file()}
    assert any(p.endswith("model.safetensors") for p in base) and base <= names


def test_installed_package_is_not_the_source_tree(installed):
    bin_dir, elsewhere, _ = installed
    r = _run([bin_dir / "python", "-c", "import tapir_exp.cli as c; print(c.__file__); print(c.CONFIG_PATH)"],
             cwd=elsewhere, env={"PATH": "/usr/bin:/bin"})
    module, conf = r.stdout.split()
    venv = bin_dir.parent
    assert Path(module).is_relative_to(venv) and Path(conf).is_relative_to(venv) and not Path(conf).is_symlink()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_from_the_wheel(installed, experiment):
    job = OmegaConf.create(_tapir(installed, "--cfg", "job", f"experiment={experiment}").stdout)
    assert job.name == OmegaConf.load(REPO / "conf" / "experiment" / f"{experiment}.yaml").get("name", job.name)
    assert job.name != "default"


def test_plan_runs_from_the_wheel(installed):
    elsewhere = installed[1]
    out = _tapir(installed, "mode=plan", "logger=none").stdout
    assert "no model was called" in out and "total" in out
    assert (elsewhere / "outputs" / "default" / "default" / "plan.json").is_file()


def test_launchers_resolve_from_the_wheel(installed):
    hydra = OmegaConf.create(_tapir(installed, "hydra/launcher=slurm_8gpu", "--cfg", "hydra").stdout)
    assert hydra.hydra.launcher.gpus_per_node == 8


def test_own_experiment_files_from_any_folder(installed, tmp_path):
    """A user's experiment in their own folder: `--config-dir DIR`, or `hydra.searchpath=[file://DIR]`."""
    mine = tmp_path / "my_configs"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "my_delta.yaml").write_text(
        "# @package _global_\n# my experiment: the shipped linear curriculum over 5 rounds\n"
        "defaults:\n  - override /curriculum: linear\n\nname: my_delta\ncurriculum:\n  rounds: 5\n")
    for args in (["--config-dir", str(mine)], [f"hydra.searchpath=[file://{mine}]"]):
        job = OmegaConf.create(_tapir(installed, *args, "experiment=my_delta", "--cfg", "job").stdout)
        assert (job.name, job.curriculum.schedule, job.curriculum.rounds) == ("my_delta", "linear", 5)
