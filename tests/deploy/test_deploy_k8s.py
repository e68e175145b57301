"""docker/k8s: every manifest valid against the Kubernetes schemas, offline; the kustomizations
complete; and the objects wired together the way the service needs (probes, resources, security,
graceful shutdown, autoscaling, the GPU variant's scheduling).

The schemas are the ones kubernetes-validate ships (strict: unknown fields are errors), for the
oldest Kubernetes release these manifests promise to work on and for the newest it knows. The custom
resources (KEDA, KServe) and the queue-driven variants are checked in test_deploy_k8s_scaling.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from deploy_files import (
    DOCKERFILES,
    K8S,
    K8S_ALL_VARIANTS,
    K8S_VARIANTS,
    REPO,
    by_kind,
    is_custom_resource,
    kustomize_resources,
    load_yaml_docs,
    manifest_files,
    parse_dockerfile,
    settings_env_names,
)

OLDEST_KUBERNETES = "1.29"
# How long the service may drain after SIGTERM (uvicorn's graceful-shutdown timeout, service/cli.py).
SERVICE_DRAIN_SECONDS = 30


def kubernetes_versions() -> list[str]:
    from kubernetes_validate.utils import latest_version

    return sorted({OLDEST_KUBERNETES, latest_version()})


def validate(doc: dict[str, Any], version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


@pytest.fixture(params=sorted(K8S_VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def objects(variant: str) -> list[tuple[Path, dict[str, Any]]]:
    # mypy does not see deploy_files (pytest puts tests/deploy on sys.path), so say what comes back.
    found: list[tuple[Path, dict[str, Any]]] = kustomize_resources(K8S_VARIANTS[variant])
    return found


def deployment(variant: str) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = by_kind(objects(variant), "Deployment")
    return found


def container(variant: str) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = deployment(variant)["spec"]["template"]["spec"]["containers"]
    return found


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.relative_to(K8S).as_posix())
def test_manifest_matches_the_kubernetes_schemas(path: Path) -> None:
    docs = load_yaml_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        if is_custom_resource(doc):
            continue  # against its CRD's schema in test_deploy_k8s_scaling.py
        for version in kubernetes_versions():
            try:
                validate(doc, version)
            except Exception as exc:  # kubernetes-validate's errors carry the path of the bad field
                where = "/".join(str(p) for p in getattr(exc, "absolute_path", []))
                pytest.fail(
                    f"{path.relative_to(REPO)} ({doc.get('kind')}) against Kubernetes {version}: {where}: {getattr(exc, 'message', exc)}"
                )


def test_schema_validation_really_validates() -> None:
    """Strict validation rejects a misspelt field and a wrong type (so a pass above means something)."""
    import kubernetes_validate

    good = load_yaml_docs(K8S / "common" / "service.yaml")[0]
    validate(good, OLDEST_KUBERNETES)
    misspelt = {**good, "spec": {**good["spec"], "selectr": good["spec"]["selector"]}}
    wrong_type = {**good, "spec": {**good["spec"], "ports": [{"port": "eighty"}]}}
    for bad in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(bad, OLDEST_KUBERNETES)


def test_every_manifest_belongs_to_a_kustomization() -> None:
    used = {path for folder in K8S_ALL_VARIANTS.values() for path, _ in kustomize_resources(folder)}
    orphans = [p.relative_to(REPO).as_posix() for p in manifest_files() if p.resolve() not in used]
    assert not orphans, f"not listed in any kustomization.yaml: {orphans}"


def test_variant_has_each_kind_once(variant: str) -> None:
    found = objects(variant)
    keys = [(doc["kind"], doc["metadata"]["name"]) for _, doc in found]
    assert len(keys) == len(set(keys)), f"duplicate objects: {keys}"
    kinds = {kind for kind, _ in keys}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds, kinds


def test_selectors_match_the_pods(variant: str) -> None:
    found = objects(variant)
    dep = deployment(variant)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items(), "the Deployment's selector does not match its pods"
    (service,) = by_kind(found, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service selects no pod"
    port_names = {p["name"]: p["containerPort"] for p in container(variant)["ports"]}
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert target in port_names or target in port_names.values(), (
            f"Service targetPort {target} is not a container port"
        )
    (pdb,) = by_kind(found, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_probes_ask_the_right_endpoints(variant: str) -> None:
    main = container(variant)
    ports = {p["name"] for p in main["ports"]} | {p["containerPort"] for p in main["ports"]}
    expected = {"readinessProbe": "/ready", "livenessProbe": "/health", "startupProbe": "/health"}
    for probe, path in expected.items():
        assert probe in main, f"no {probe}"
        get = main[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must ask {path}"
        assert get["port"] in ports
    startup = main["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 120, "the startup probe must leave time to load the models"
    liveness = main["livenessProbe"]
    assert liveness.get("failureThreshold", 3) * liveness.get("periodSeconds", 10) >= 20, "liveness too eager"


def test_requests_and_limits_are_set(variant: str) -> None:
    resources = container(variant)["resources"]
    for kind in ("requests", "limits"):
        for name in ("cpu", "memory"):
            assert name in resources.get(kind, {}), f"resources.{kind}.{name} is not set"
    assert quantity(resources["limits"]["memory"]) >= quantity(resources["requests"]["memory"])
    assert quantity(resources["limits"]["cpu"]) >= quantity(resources["requests"]["cpu"])
    assert quantity(resources["requests"]["memory"]) >= 1024**3, (
        "the model alone needs ~0.6 GiB; request at least 1 GiB"
    )


def test_runs_as_the_images_non_root_user(variant: str) -> None:
    spec = deployment(variant)["spec"]["template"]["spec"]
    pod_security = spec["securityContext"]
    main = container(variant)
    security = main["securityContext"]
    assert pod_security.get("runAsNonRoot") is True
    image_user = parse_dockerfile(DOCKERFILES["cuda" if variant == "gpu" else "cpu"]).final.last("USER")
    assert image_user is not None
    assert pod_security.get("runAsUser") == int(image_user.args.split(":")[0]), "runAsUser must be the image's USER"
    assert security.get("allowPrivilegeEscalation") is False
    assert security.get("capabilities", {}).get("drop") == ["ALL"]
    if security.get("readOnlyRootFilesystem"):
        mounts = {m["mountPath"] for m in main.get("volumeMounts", [])}
        assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"
    assert spec.get("automountServiceAccountToken") is False, "the service never talks to the API server"


def test_shutdown_has_time_to_drain(variant: str) -> None:
    spec = deployment(variant)["spec"]["template"]["spec"]
    main = container(variant)
    pre_stop = 0
    command = main.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if command:
        match = re.search(r"sleep\((\d+)\)", " ".join(command))
        assert match, f"unrecognised preStop {command}"
        pre_stop = int(match.group(1))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    assert grace >= pre_stop + SERVICE_DRAIN_SECONDS + 5, f"terminationGracePeriodSeconds {grace} cuts the drain short"
    strategy = deployment(variant)["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] in (0, "0%"), "rolling updates must not drop capacity"


def test_autoscaler_targets_the_deployment(variant: str) -> None:
    found = objects(variant)
    (hpa,) = by_kind(found, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    dep = deployment(variant)
    assert (target["kind"], target["name"], target["apiVersion"]) == (
        "Deployment",
        dep["metadata"]["name"],
        dep["apiVersion"],
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    resource_metrics = {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"}
    for name in resource_metrics:
        assert name in container(variant)["resources"]["requests"], f"utilization of {name} needs a {name} request"
    (pdb,) = by_kind(found, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] <= hpa["spec"]["minReplicas"], "the PDB would block every drain at minReplicas"


def test_environment_names_are_real_settings(variant: str) -> None:
    names = {e["name"] for e in container(variant).get("env", [])}
    unknown = {n for n in names if n.startswith("GENAI_")} - settings_env_names()
    assert not unknown, f"{sorted(unknown)} are not settings of service/config.py"
    env = {e["name"]: e.get("value") for e in container(variant)["env"]}
    assert env.get("GENAI_HOST") == "0.0.0.0"
    assert str(container(variant)["ports"][0]["containerPort"]) == env.get("GENAI_PORT", "8000")


def test_gpu_variant_asks_for_a_gpu_and_the_cpu_variant_does_not() -> None:
    gpu_spec = deployment("gpu")["spec"]["template"]["spec"]
    gpu = container("gpu")
    assert int(gpu["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
    assert gpu["image"].split(":")[-1] in {"cuda", "gpu"} or "cuda" in gpu["image"], gpu["image"]
    assert {e["name"]: e.get("value") for e in gpu["env"]}.get("GENAI_DEVICE") == "cuda"
    assert gpu_spec.get("nodeSelector") or gpu_spec.get("affinity"), "GPU pods need a node selector or affinity"
    assert any(t.get("key") == "nvidia.com/gpu" for t in gpu_spec.get("tolerations", [])), "tolerate the GPU taint"

    cpu = container("cpu")
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert {e["name"]: e.get("value") for e in cpu["env"]}.get("GENAI_DEVICE") == "cpu"
    assert "cuda" not in cpu["image"]


def quantity(value: object) -> float:
    """A Kubernetes quantity (`500m`, `2`, `1536Mi`, `3Gi`, `1G`) as a number."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)
