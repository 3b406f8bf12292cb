"""The image every component runs on: the one the Dockerfile builds, tagged with the package version.

kfp is installed in it (a dependency of sibeatgan), so components set install_kfp_package=False:
nothing is pip-installed when a task starts.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

REGISTRY = "ghcr.io/si-beatgan/sibeatgan"


def package_version() -> str:
    """The version in pyproject.toml, the one place it is set."""
    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


IMAGE = f"{REGISTRY}:{package_version()}"
