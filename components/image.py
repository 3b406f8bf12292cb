"""The image every component runs on, chosen when the pipeline is compiled.

SIBEATGAN_IMAGE (environment, read at import) names it, e.g. the VERSION-COMMIT name scripts/build-image.sh
prints, or your registry's copy: `SIBEATGAN_IMAGE=registry.example.com/ml/sibeatgan:0.1.0-abc123 python -m
pipelines.si_beatgan`. Unset, it is the public image of this version, DEFAULT_REPOSITORY:<pyproject version>.
SIBEATGAN_IMAGE_PULL_SECRETS (comma-separated Secret names in the pipeline's namespace) are the
imagePullSecrets for a private registry; `with_image_settings` puts them on a task.

kfp is installed in the image (a dependency of sibeatgan), so components set install_kfp_package=False:
nothing is pip-installed when a task starts.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_REPOSITORY = "ghcr.io/si-beatgan/sibeatgan"
# [registry[:port]/]path[:tag][@sha256:digest], lower-case path components (the OCI distribution grammar, simplified).
_REFERENCE = re.compile(r"^(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                        r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def package_version() -> str:
    """The version in pyproject.toml, the one place it is set."""
    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def default_image() -> str:
    return f"{DEFAULT_REPOSITORY}:{package_version()}"


def image_from_env(env: dict[str, str] | None = None) -> str:
    """SIBEATGAN_IMAGE if set (checked: a pinned reference, never :latest or untagged), else the default image."""
    env = os.environ if env is None else env
    image = env.get("SIBEATGAN_IMAGE", "").strip()
    if not image:
        return default_image()
    if not _REFERENCE.match(image):
        raise ValueError(f"SIBEATGAN_IMAGE={image!r} is not an image reference (registry/path:tag)")
    last = image.rsplit("/", 1)[-1]
    if "@" not in last and (":" not in last or last.endswith(":latest")):
        raise ValueError(f"SIBEATGAN_IMAGE={image!r} is not pinned: give a version tag or a digest, not latest")
    return image


def pull_secrets_from_env(env: dict[str, str] | None = None) -> tuple[str, ...]:
    """SIBEATGAN_IMAGE_PULL_SECRETS as a tuple of Secret names (empty when unset)."""
    env = os.environ if env is None else env
    names = tuple(n.strip() for n in env.get("SIBEATGAN_IMAGE_PULL_SECRETS", "").split(",") if n.strip())
    bad = [n for n in names if not _SECRET_NAME.match(n)]
    if bad:
        raise ValueError(f"SIBEATGAN_IMAGE_PULL_SECRETS: {', '.join(bad)} not a Kubernetes Secret name")
    return names


IMAGE = image_from_env()
PULL_SECRETS = pull_secrets_from_env()


def with_image_settings(task: Any) -> Any:
    """Give a pipeline task the registry's imagePullSecrets, if any were set at compile time."""
    if PULL_SECRETS:
        from kfp import kubernetes

        kubernetes.set_image_pull_secrets(task, list(PULL_SECRETS))
    return task
