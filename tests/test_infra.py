"""infra/: every manifest validates against the Kubernetes schemas (offline, kubernetes-validate), every
kustomization lists every file beside it, and the overlay, rendered by kustomize (`kubectl kustomize`, offline),
has what a cluster beside Kubeflow needs: its own namespace and names, the overlay's parameters (storage class,
access mode, pipeline namespace, image) in the objects, uid 10001's volumes writable, requests and limits, probes,
MLflow's NO_PERMISSIONS with a non-admin pipeline user, NetworkPolicies; and the pipeline agrees with it.

No Kubernetes cluster runs here: these checks are what can be done without one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
OVERLAY = INFRA / "overlays" / "kubeflow"
K8S_VERSION = "1.33.0"
SERVICES_NS = "sibeatgan"
IMAGE_UID = 10001  # the Dockerfile's USER


def _kustomizations() -> list[Path]:
    return sorted(INFRA.rglob("kustomization.yaml"))


def _manifests() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*.yaml") if p.name != "kustomization.yaml")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _params(overlay: Path = OVERLAY) -> dict[str, str]:
    lines = (overlay / "params.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def render(overlay: Path = OVERLAY) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    proc = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d is not None]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return render()


def _one(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _pods(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(object, pod spec) of every workload."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            out.append((d, d["spec"]["template"]["spec"]))
    return out


def _env(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


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
        for gen in spec.get("configMapGenerator", []):
            for entry in gen.get("files", []) + gen.get("envs", []):
                assert (kust.parent / entry).is_file(), f"{kust.relative_to(ROOT)} generates from {entry}, which does not exist"
        beside = {p.resolve() for p in kust.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
        unlisted = sorted(str(p.relative_to(ROOT)) for p in beside - listed)
        assert not unlisted, f"{kust.relative_to(ROOT)} does not list {unlisted}"
    orphans = sorted(str(p.relative_to(ROOT)) for p in _manifests() if p.resolve() not in listed)
    assert not orphans, f"manifests no kustomization uses: {orphans}"


def _validate(doc: dict, where: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    try:
        kv.validate(doc, K8S_VERSION, strict=True)
    except kv.ValidationError as err:
        pytest.fail(f"{where} {doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, err.path))}: {err.message}")


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: str(p.relative_to(INFRA)))
def test_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        _validate(doc, str(path.relative_to(ROOT)))


def test_the_rendered_overlay_validates(rendered) -> None:
    assert len(rendered) > 15
    for doc in rendered:
        _validate(doc, "kubectl kustomize infra/overlays/kubeflow:")


def test_schema_validation_catches_a_mistake() -> None:
    """The validator is strict: an unknown field in a container is refused (so the tests above can fail)."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    (deployment,) = [d for d in _docs(INFRA / "base" / "mlflow.yaml") if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSION, strict=True)


def test_services_live_in_their_own_namespace_with_names_that_cannot_clash(rendered) -> None:
    params = _params()
    (ns,) = [d for d in rendered if d["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == SERVICES_NS
    for d in rendered:
        name, where = d["metadata"]["name"], d["metadata"].get("namespace")
        assert name.startswith("sibeatgan"), f"{d['kind']}/{name}: every name carries the sibeatgan prefix"
        if d["kind"] in ("PersistentVolumeClaim", "Job") and name.startswith("sibeatgan-checkpoints"):
            assert where == params["pipeline_namespace"], f"{d['kind']}/{name} belongs beside the pipeline's pods"
        elif d["kind"] != "Namespace":
            assert where == SERVICES_NS, f"{d['kind']}/{name} is in {where}, not {SERVICES_NS}"
    assert not [d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "minio"], \
        "KFP's own MinIO is Deployment/minio"
    services = {d["metadata"]["name"] for d in rendered if d["kind"] == "Service"}
    assert services == {"sibeatgan-minio", "sibeatgan-postgres", "sibeatgan-mlflow"}


def test_overlay_parameters_reach_the_objects(rendered, tmp_path) -> None:
    """params.env sets the checkpoint volume's class, access mode and size and the pipeline's namespace; another
    params.env (a copy of the overlay) renders other objects, so they are parameters, not decoration."""
    params = _params()
    pvc = _one(rendered, "PersistentVolumeClaim", "sibeatgan-checkpoints")
    assert pvc["spec"]["storageClassName"] == params["storage_class"]
    assert pvc["spec"]["accessModes"] == [params["checkpoint_access_mode"]] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == params["checkpoint_size"]

    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    mine = copy / "overlays" / "kubeflow"
    (mine / "params.env").write_text("storage_class=efs-sc\ncheckpoint_access_mode=ReadWriteOnce\ncheckpoint_size=7Gi\n"
                                     "pipeline_namespace=team-ecg\n")
    kust = mine / "pipeline" / "kustomization.yaml"
    kust.write_text(kust.read_text().replace("namespace: kubeflow", "namespace: team-ecg"))
    other = render(mine)
    pvc = _one(other, "PersistentVolumeClaim", "sibeatgan-checkpoints")
    assert (pvc["spec"]["storageClassName"], pvc["spec"]["accessModes"], pvc["metadata"]["namespace"]) == \
        ("efs-sc", ["ReadWriteOnce"], "team-ecg")
    policy = _one(other, "NetworkPolicy", "sibeatgan-from-pipelines")
    assert policy["spec"]["ingress"][0]["from"][1]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "team-ecg"}
    assert not [d for d in other if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sibeatgan-params"], \
        "the parameter file is not applied"


def test_the_pipeline_namespace_is_one_setting(rendered) -> None:
    pipeline_kust = yaml.safe_load((OVERLAY / "pipeline" / "kustomization.yaml").read_text())
    assert pipeline_kust["namespace"] == _params()["pipeline_namespace"]


def test_image_uid_can_write_its_volumes(rendered) -> None:
    """Pods that run as the image's uid and mount a volume get fsGroup 10001; the checkpoint volume (RWX storage
    may ignore fsGroup) is chowned to 10001 by a Job with only CHOWN/FOWNER."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {IMAGE_UID}" in dockerfile and f"--uid {IMAGE_UID}" in dockerfile
    for obj, pod in _pods(rendered):
        ctx = pod.get("securityContext", {})
        mounts_claim = any("persistentVolumeClaim" in v for v in pod.get("volumes", []))
        if ctx.get("runAsUser") == IMAGE_UID and mounts_claim:
            assert ctx.get("fsGroup") == IMAGE_UID, f"{obj['metadata']['name']}: fsGroup"
    owner = _one(rendered, "Job", "sibeatgan-checkpoints-owner")
    pod = owner["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == IMAGE_UID
    (c,) = pod["containers"]
    assert f"chown {IMAGE_UID}:{IMAGE_UID} /checkpoints" in " ".join(c["command"])
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "sibeatgan-checkpoints"


def test_every_container_has_requests_limits_and_a_pinned_image(rendered) -> None:
    from components.image import default_image

    for obj, pod in _pods(rendered):
        for c in pod["containers"]:
            where = f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"
            res = c.get("resources", {})
            assert {"cpu", "memory"} <= set(res.get("requests", {})), f"{where}: requests"
            assert {"cpu", "memory"} <= set(res.get("limits", {})), f"{where}: limits"
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{where}: unpinned image {image}"
    ours = {c["image"] for _, pod in _pods(rendered) for c in pod["containers"] if "sibeatgan" in c["image"]}
    assert ours == {default_image()}, "the MLflow server and the user Job run on the project's image of this version"


def test_postgres_has_liveness_and_readiness_probes(rendered) -> None:
    pod = _one(rendered, "StatefulSet", "sibeatgan-postgres")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["exec"]["command"][0] == "pg_isready", probe
    assert c["livenessProbe"]["initialDelaySeconds"] >= 30 and c["livenessProbe"]["failureThreshold"] >= 3


def test_mlflow_denies_by_default_and_the_pipeline_is_not_its_admin(rendered) -> None:
    from pipelines.si_beatgan import SECRETS

    server = _one(rendered, "Deployment", "sibeatgan-mlflow")["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(server["args"])
    assert "default_permission = NO_PERMISSIONS" in script and "--app-name basic-auth" in script
    env = _env(server)
    admin_secret = env["MLFLOW_AUTH_ADMIN_PASSWORD"]["secretKeyRef"]["name"]
    pipeline_secret, pipeline_keys = SECRETS["mlflow"]
    assert admin_secret != pipeline_secret, "the pipeline's secret holds its own user, not the admin"
    job = _one(rendered, "Job", "sibeatgan-mlflow-users")["spec"]["template"]["spec"]
    (users,) = job["containers"]
    uenv = _env(users)
    assert uenv["MLFLOW_TRACKING_PASSWORD"]["secretKeyRef"]["name"] == admin_secret
    assert {uenv[k]["secretKeyRef"]["name"] for k in ("PIPELINE_USERNAME", "PIPELINE_PASSWORD")} == {pipeline_secret}
    assert {uenv[k]["secretKeyRef"]["key"] for k in ("PIPELINE_USERNAME", "PIPELINE_PASSWORD")} == set(pipeline_keys)
    assert uenv["MLFLOW_TRACKING_URI"] == "http://sibeatgan-mlflow:5000"
    (volume,) = job["volumes"]
    cm = [d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]]
    assert cm and cm[0]["data"]["mlflow-users.py"] == (INFRA / "base" / "mlflow-users.py").read_text()
    assert users["command"] == ["python", "/scripts/mlflow-users.py"]


def test_network_policies_deny_by_default_and_admit_the_pipeline_namespace(rendered) -> None:
    policies = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]
    admitted: dict[int, set[str]] = {}
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            sources = {f"ns:{f['namespaceSelector']['matchLabels']['kubernetes.io/metadata.name']}" if "namespaceSelector" in f
                       else "same-namespace" for f in rule["from"]}
            for port in rule["ports"]:
                admitted.setdefault(port["port"], set()).update(sources)
    pipeline_ns = f"ns:{_params()['pipeline_namespace']}"
    for svc in (d for d in rendered if d["kind"] == "Service"):
        for port in svc["spec"]["ports"]:
            assert port["port"] in admitted, f"{svc['metadata']['name']}:{port['port']} is unreachable"
    assert {5000, 9000, 5432} == {p for p, s in admitted.items() if pipeline_ns in s}, "the pipeline reaches MLflow, S3, PostgreSQL"
    assert pipeline_ns not in admitted[9001], "MinIO's console stays inside the namespace"


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


def test_pipeline_and_infra_agree(rendered) -> None:
    """The PVC, the GPU pool's label and taint, the MLflow service, and the secrets are the same on both sides."""
    pytest.importorskip("kfp")
    from pipelines.si_beatgan import GPU_TOLERATION, SECRETS, si_beatgan

    defaults = {k: v.default for k, v in si_beatgan.component_spec.inputs.items()}
    pvc = _one(rendered, "PersistentVolumeClaim", defaults["checkpoint_pvc"])
    assert pvc["metadata"]["namespace"] == _params()["pipeline_namespace"]
    gpu_docs = [d for p in sorted((INFRA / "gpu").glob("*.yaml")) if p.name != "kustomization.yaml" for d in _docs(p)]
    (plugin,) = [d for d in gpu_docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "nvidia-device-plugin"]
    pod = plugin["spec"]["template"]["spec"]
    assert pod["nodeSelector"].items() <= defaults["gpu_type"].items()
    assert GPU_TOLERATION in pod["tolerations"]
    service = _one(rendered, "Service", "sibeatgan-mlflow")
    assert defaults["mlflow_uri"] == (f"http://{service['metadata']['name']}.{service['metadata']['namespace']}"
                                      f".svc.cluster.local:{service['spec']['ports'][0]['port']}")
    refs = _secret_refs(rendered)
    name, keys = SECRETS["s3"]
    assert {(name, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")} <= refs
    mlflow_secret, mlflow_keys = SECRETS["mlflow"]
    assert {(mlflow_secret, k) for k in mlflow_keys} <= refs, "the user Job creates the user the pipeline logs in as"
    readme = (INFRA / "README.md").read_text()
    wanted = refs | {(name, k) for k in keys} | {(SECRETS["optuna"][0], k) for k in SECRETS["optuna"][1]}
    for secret, key in sorted(wanted):
        assert secret in readme and key in readme, f"infra/README.md does not say how to create {secret} ({key})"
