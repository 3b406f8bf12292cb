"""infra/: every manifest validates against the Kubernetes schemas (offline, kubernetes-validate), every
kustomization lists every file beside it, and the names the pipeline relies on match the manifests.

No Kubernetes cluster (nor kustomize) runs here: these checks are what can be done without one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S_VERSION = "1.33.0"


def _kustomizations() -> list[Path]:
    return sorted(INFRA.rglob("kustomization.yaml"))


def _manifests() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*.yaml") if p.name != "kustomization.yaml")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all_docs() -> list[dict]:
    return [d for p in _manifests() for d in _docs(p)]


def test_every_kustomization_lists_every_file_and_nothing_missing() -> None:
    assert _kustomizations(), "infra/ has no kustomization.yaml"
    listed: set[Path] = set()
    for kust in _kustomizations():
        spec = yaml.safe_load(kust.read_text())
        assert spec["kind"] == "Kustomization" and spec["apiVersion"].startswith("kustomize.config.k8s.io/")
        for entry in spec.get("resources", []):
            target = (kust.parent / entry).resolve()
            assert target.exists(), f"{kust.relative_to(ROOT)} lists {entry}, which does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").is_file(), f"{entry}: a folder without kustomization.yaml"
            listed.add(target)
        beside = {p.resolve() for p in kust.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
        unlisted = sorted(str(p.relative_to(ROOT)) for p in beside - listed)
        assert not unlisted, f"{kust.relative_to(ROOT)} does not list {unlisted}"
    orphans = sorted(str(p.relative_to(ROOT)) for p in _manifests() if p.resolve() not in listed)
    assert not orphans, f"manifests no kustomization uses: {orphans}"


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: str(p.relative_to(INFRA)))
def test_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    docs = _docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as err:
            pytest.fail(f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}: "
                        f"{'.'.join(map(str, err.path))}: {err.message}")


def test_schema_validation_catches_a_mistake() -> None:
    """The validator is strict: an unknown field in a container is refused (so the test above can fail)."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    (deployment,) = [d for d in _docs(INFRA / "base" / "mlflow.yaml") if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSION, strict=True)


def _secret_refs(node: object) -> set[tuple[str, str]]:
    """Every (secret, key) a manifest reads through secretKeyRef."""
    found: set[tuple[str, str]] = set()
    if isinstance(node, dict):
        ref = node.get("secretKeyRef")
        if isinstance(ref, dict):
            found.add((ref["name"], ref["key"]))
        for v in node.values():
            found |= _secret_refs(v)
    elif isinstance(node, list):
        for v in node:
            found |= _secret_refs(v)
    return found


def test_pipeline_and_infra_agree() -> None:
    """The PVC, the GPU pool's label and taint, the image, and the secrets are the same on both sides."""
    pytest.importorskip("kfp")
    from components import IMAGE
    from pipelines.si_beatgan import GPU_TOLERATION, SECRETS, si_beatgan

    docs = _all_docs()
    defaults = {k: v.default for k, v in si_beatgan.component_spec.inputs.items()}
    pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert defaults["checkpoint_pvc"] in pvcs
    (plugin,) = [d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "nvidia-device-plugin"]
    pod = plugin["spec"]["template"]["spec"]
    assert pod["nodeSelector"].items() <= defaults["gpu_type"].items()
    assert GPU_TOLERATION in pod["tolerations"]
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert IMAGE in images, "the MLflow server runs on the project's image"
    assert all(":" in i and not i.endswith(":latest") for i in images), f"unpinned images: {images}"
    refs = _secret_refs(docs)
    name, keys = SECRETS["s3"]
    assert {(name, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")} <= refs
    mlflow_secret, mlflow_keys = SECRETS["mlflow"]
    assert {(mlflow_secret, k) for k in mlflow_keys} <= refs, "register logs in as the server's own tracking user"
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow"]
    assert defaults["mlflow_uri"] == f"http://mlflow:{service['spec']['ports'][0]['port']}"
    readme = (ROOT / "README.md").read_text()
    for secret, key in refs | {(name, k) for k in keys} | {SECRETS["optuna"][:1] + (k,) for k in SECRETS["optuna"][1]}:
        assert secret in readme and key in readme, f"README does not say how to create {secret} ({key})"
