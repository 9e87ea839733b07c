"""Puts tapir-exp's ``launchers/`` on Hydra's config search path, so that ``hydra/launcher=slurm_8gpu`` and
friends resolve from any working directory. The folder ships inside the package (``tapir_exp/launchers``:
a symlink to the repository's ``launchers/`` in the source tree, the files themselves in a wheel)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class TapirLaunchersSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # resources.files imports only the package's __init__ (no resolvers, no torch): every Hydra app in
        # the environment loads this plugin.
        launchers = Path(str(resources.files("tapir_exp").joinpath("launchers")))
        if launchers.is_dir():
            search_path.append(provider="tapir-exp-launchers", path=f"file://{launchers}")
