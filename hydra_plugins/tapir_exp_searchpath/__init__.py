"""Puts the repository's ``launchers/`` on Hydra's config search path, so that
``hydra/launcher=slurm_8gpu`` and friends resolve from any working directory."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

LAUNCHERS = Path(__file__).resolve().parents[2] / "launchers"


class TapirLaunchersSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if LAUNCHERS.is_dir():
            search_path.append(provider="tapir-exp-launchers", path=f"file://{LAUNCHERS}")
