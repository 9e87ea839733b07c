"""The environment a round records does not depend on how the process was started: a source checkout on
sys.path (``PYTHONPATH=$PWD``) shows the project's metadata a second time, which must not change the record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tapir_exp.environment import describe

PRINT = "import json; from tapir_exp.environment import describe; print(json.dumps(describe()))"


def _described(extra_path: Path | None) -> dict:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", PRINT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_second_copy_of_a_packages_metadata_on_sys_path_changes_nothing(tmp_path):
    from importlib import metadata

    name, version = "tapir-exp", metadata.version("tapir-exp")
    info = tmp_path / f"tapir_exp-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    plain, with_copy = _described(None), _described(tmp_path)
    assert sum(d.metadata["Name"].lower() == name for d in metadata.distributions(path=[str(tmp_path), *sys.path])) >= 2
    assert with_copy["packages"] == plain["packages"] and with_copy["packages_hash"] == plain["packages_hash"]
    assert plain["packages"] == describe()["packages"]


def test_kernel_selecting_variables_are_recorded_and_key_the_shared_caches_only_when_set(monkeypatch):
    # ATEN_CPU_CAPABILITY=avx2 (and MKL's / oneDNN's ISA caps) make this CPU compute like an AVX2 one: other
    # floats, so another environment and other shared-cache keys; unset, the record and the keys are unchanged
    from tapir_exp.student.shared import shared_key

    for name in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    plain, key = _described(None), shared_key({"step": "train"})
    assert "kernel_env" not in plain
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    emulated = _described(None)
    assert emulated.pop("kernel_env") == "ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2"
    assert emulated == plain  # nothing else of the record moved
    assert shared_key({"step": "train"}) != key
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS")
    assert shared_key({"step": "train"}) == key


def test_the_report_shows_the_kernel_variables_only_when_a_run_set_them():
    from tapir_exp.report import environments_section

    base = {"cpu": "X", "cpu_flags": ["avx2"], "cores": 2, "torch_threads": 2}
    run = lambda label, eid, env: {"label": label, "rounds": [{"environment": eid}], "environments": {eid: env}}  # noqa: E731
    plain = environments_section([run("a", "e1", base)])
    assert "kernel_env" not in plain
    both = environments_section([run("a", "e1", base), run("b", "e2", {**base, "kernel_env": "ATEN_CPU_CAPABILITY=avx2"})])
    header, _, first, second = both.strip().splitlines()[-4:]
    assert "| kernel_env |" in header and "ATEN_CPU_CAPABILITY=avx2" in second and "ATEN" not in first
