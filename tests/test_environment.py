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
