"""docker/k8s/keda, docker/k8s/prometheus-adapter and docker/k8s/kserve: the custom resources valid
against their CRDs' schemas offline (and the validator really refusing bad ones), `kubectl kustomize`
rendering every variant as these checks read it, and the wiring that makes queue-driven scaling work:
the scale target is the Deployment kustomize renders, the queries ask for gauges the service really
exports, the targets leave room in a pod's batch, and the KServe container is the Deployment's.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_files import (
    K8S,
    K8S_ALL_VARIANTS,
    K8S_KSERVE,
    K8S_QUEUE_VARIANTS,
    KSERVE_COMPONENT_FIELDS,
    KUBERNETES_DEFINITIONS,
    REPO,
    is_custom_resource,
    kustomize_resources,
    load_yaml_docs,
    manifest_files,
    run,
    setting_default,
    tool,
    validate_custom_resource,
)
from kserve_sdk import kserve_types

Doc = dict[str, Any]
OLDEST_KUBERNETES = "1.29"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "adapter-values.yaml"
# The prometheus scaler's metadata keys (KEDA's docs; the CRD types `metadata` as a string map only).
KEDA_PROMETHEUS_KEYS = {
    "serverAddress",
    "query",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "queryParameters",
    "unsafeSsl",
    "timeout",
    "authModes",
}


def kubernetes_versions() -> list[str]:
    from kubernetes_validate.utils import latest_version

    return sorted({OLDEST_KUBERNETES, latest_version()})


def rendered(folder: Path) -> list[Doc]:
    return [doc for _, doc in kustomize_resources(folder)]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc.get("kind") == kind]


def only(docs: list[Doc], kind: str) -> Doc:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def scaled_object() -> Doc:
    return only(rendered(K8S_QUEUE_VARIANTS["keda"]), "ScaledObject")


def prometheus_trigger() -> Doc:
    triggers = scaled_object()["spec"]["triggers"]
    assert [t["type"] for t in triggers] == ["prometheus"], "one Prometheus trigger, on the queue"
    found: Doc = triggers[0]
    return found


def adapter_rules() -> list[Doc]:
    values = load_yaml_docs(ADAPTER_VALUES)[0]
    rules: list[Doc] = values["rules"]["custom"]
    assert rules, "adapter-values.yaml has no custom rule"
    return rules


def exported_metrics() -> dict[str, str]:
    """Every metric family in the service's own /metrics exposition, with its type."""
    from prometheus_client.parser import text_string_to_metric_families

    from service.observability.metrics import ServiceMetrics

    text = ServiceMetrics().render().decode()
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def metric_names(promql: str) -> set[str]:
    """The service's metric names a query reads (every genai_* identifier, labels and templates aside)."""
    without_strings = re.sub(r'"[^"]*"', '""', promql)
    return set(re.findall(r"\bgenai_[a-z0-9_]+\b", without_strings))


# --- schemas ------------------------------------------------------------------------------------


def custom_resources() -> list[tuple[Path, Doc]]:
    return [(path, doc) for path in manifest_files() for doc in load_yaml_docs(path) if is_custom_resource(doc)]


@pytest.mark.parametrize(
    ("path", "doc"), [pytest.param(p, d, id=p.relative_to(K8S).as_posix()) for p, d in custom_resources()]
)
def test_custom_resource_matches_its_crd_schema(path: Path, doc: Doc) -> None:
    import jsonschema

    for version in kubernetes_versions():
        try:
            validate_custom_resource(doc, version)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{path.relative_to(REPO)} ({doc['kind']}), Kubernetes {version} types: {where}: {exc.message}")


def test_every_custom_resource_kind_is_checked() -> None:
    kinds = sorted((doc["apiVersion"], doc["kind"]) for _, doc in custom_resources())
    assert kinds == [("keda.sh/v1alpha1", "ScaledObject"), ("serving.kserve.io/v1beta1", "InferenceService")]


def _set(path: list[str | int], value: object) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _drop(path: list[str | int]) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


TRIGGER: list[str | int] = ["spec", "triggers", 0]
PREDICTOR: list[str | int] = ["spec", "predictor"]
CONTAINER: list[str | int] = [*PREDICTOR, "containers", 0]
BROKEN = {
    "scaledobject: minReplicaCount a string": ("keda", _set(["spec", "minReplicaCount"], "2")),
    "scaledobject: unknown trigger field": ("keda", _set([*TRIGGER, "querry"], "up")),
    "scaledobject: trigger without type": ("keda", _drop([*TRIGGER, "type"])),
    "scaledobject: trigger metadata not a string": ("keda", _set([*TRIGGER, "metadata", "threshold"], 12)),
    "scaledobject: scaleTargetRef without name": ("keda", _drop(["spec", "scaleTargetRef", "name"])),
    "scaledobject: HPA field name in spec": ("keda", _set(["spec", "maxReplicas"], 10)),
    "scaledobject: null": ("keda", _set(["spec", "pollingInterval"], None)),
    "inferenceservice: minReplicas a string": ("kserve", _set([*PREDICTOR, "minReplicas"], "2")),
    "inferenceservice: unknown predictor field": ("kserve", _set([*PREDICTOR, "replicas"], 2)),
    "inferenceservice: scaleMetric not KServe's": ("kserve", _set([*PREDICTOR, "scaleMetric"], "queue")),
    "inferenceservice: no predictor": ("kserve", _drop(["spec", "predictor"])),
    "inferenceservice: misspelt container field": ("kserve", _set([*CONTAINER, "imagePullPolicyy"], "Always")),
    "inferenceservice: containerPort a string": ("kserve", _set([*CONTAINER, "ports", 0, "containerPort"], "8000")),
    "inferenceservice: misspelt probe field": ("kserve", _set([*CONTAINER, "readinessProbe", "periodSecond"], 5)),
    "inferenceservice: container without name": ("kserve", _drop([*CONTAINER, "name"])),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_crd_validation_refuses_a_broken_manifest(case: str) -> None:
    """Each manifest passes as it is, and fails once one field is wrong (so a pass above means something)."""
    import jsonschema

    which, change = BROKEN[case]
    folder = K8S_QUEUE_VARIANTS["keda"] if which == "keda" else K8S_KSERVE
    (good,) = (doc for doc in rendered(folder) if is_custom_resource(doc))
    validate_custom_resource(good, OLDEST_KUBERNETES)
    bad = copy.deepcopy(good)
    change(bad)
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(bad, OLDEST_KUBERNETES)


# --- kustomize ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(K8S_ALL_VARIANTS))
def test_kubectl_kustomize_renders_what_these_checks_read(variant: str) -> None:
    """`kubectl kustomize` (the kubectl wheel of the dev extra) builds every variant, to the objects the checks see."""
    folder = K8S_ALL_VARIANTS[variant]
    result = run([tool("kubectl"), "kustomize", str(folder)])
    assert result.returncode == 0, f"kubectl kustomize {folder.relative_to(REPO)}: {result.stderr}"
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]

    def key(doc: Doc) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(built, key=key) == sorted(rendered(folder), key=key)


def test_queue_variants_replace_the_cpu_autoscaler_with_their_own() -> None:
    keda = rendered(K8S_QUEUE_VARIANTS["keda"])
    assert not of_kind(keda, "HorizontalPodAutoscaler"), (
        "KEDA makes its own HPA: a second one on the same Deployment would fight it"
    )
    adapter_hpa = only(rendered(K8S_QUEUE_VARIANTS["prometheus-adapter"]), "HorizontalPodAutoscaler")
    cpu_hpa = only(rendered(K8S), "HorizontalPodAutoscaler")
    assert adapter_hpa["metadata"]["name"] == cpu_hpa["metadata"]["name"], "same name: one variant replaces the other"
    assert {m["type"] for m in adapter_hpa["spec"]["metrics"]} == {"Pods"}, "scaled on the queue, not on CPU"
    for variant in K8S_QUEUE_VARIANTS.values():
        assert only(rendered(variant), "Deployment") == only(rendered(K8S), "Deployment"), (
            f"{variant.relative_to(REPO)} must scale the very Deployment of docker/k8s"
        )


# --- KEDA ---------------------------------------------------------------------------------------


def test_scaledobject_targets_the_rendered_deployment() -> None:
    docs = rendered(K8S_QUEUE_VARIANTS["keda"])
    deployment = only(docs, "Deployment")
    target = scaled_object()["spec"]["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment"), target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )


def test_scaledobject_replica_bounds_are_sane() -> None:
    spec = scaled_object()["spec"]
    low, high = spec["minReplicaCount"], spec["maxReplicaCount"]  # KEDA's default minimum is 0: say it
    assert 1 <= low <= high, "never to zero: a new pod must load its model, and with no pod there is no queue metric"
    pdb = only(rendered(K8S_QUEUE_VARIANTS["keda"]), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] <= low, "the PDB would block every drain at minReplicaCount"
    fallback = spec["fallback"]
    assert low <= fallback["replicas"] <= high and fallback["failureThreshold"] >= 1
    assert prometheus_trigger().get("metricType", "AverageValue") == "AverageValue", (
        "KEDA's fallback needs AverageValue"
    )
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    cpu_hpa = only(rendered(K8S), "HorizontalPodAutoscaler")
    assert down["stabilizationWindowSeconds"] >= cpu_hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
    assert (low, high) == (cpu_hpa["spec"]["minReplicas"], cpu_hpa["spec"]["maxReplicas"]), "same bounds as the CPU HPA"


def test_prometheus_trigger_is_well_formed() -> None:
    metadata = prometheus_trigger()["metadata"]
    unknown = set(metadata) - KEDA_PROMETHEUS_KEYS
    assert not unknown, f"not settings of KEDA's prometheus scaler: {sorted(unknown)}"
    assert re.fullmatch(r"https?://[\w.-]+(:\d+)?(/\S*)?", metadata["serverAddress"]), metadata["serverAddress"]
    assert float(metadata["threshold"]) > 0
    # an empty answer (Prometheus down, a wrong namespace) is an error that triggers the fallback, not a 0
    assert metadata.get("ignoreNullValues") == "false"
    assert metadata["query"].count("(") == metadata["query"].count(")")


# --- the metrics the queries read -------------------------------------------------------------


def test_queries_read_gauges_the_service_exports() -> None:
    exported = exported_metrics()
    queries = {"keda trigger": prometheus_trigger()["metadata"]["query"]}
    for i, rule in enumerate(adapter_rules()):
        queries[f"adapter rule {i} seriesQuery"] = rule["seriesQuery"]
        queries[f"adapter rule {i} metricsQuery"] = rule["metricsQuery"]
    for where, query in queries.items():
        names = metric_names(query)
        if "metricsQuery" not in where:  # a metricsQuery may read its series only as <<.Series>>
            assert names, f"{where} reads no genai_* metric: {query}"
        for name in names:
            assert name in exported, f"{where} reads {name}, which the service does not export ({sorted(exported)})"
            assert exported[name] == "gauge", f"{where}: {name} is a {exported[name]}, not a queue gauge"
    # the queue signal: what runs in the batch and what waits for a place in it, in each variant
    queue = {"genai_requests_running", "genai_requests_waiting"}
    assert queue <= metric_names(queries["keda trigger"])
    adapter = set().union(*(metric_names(q) for where, q in queries.items() if where.startswith("adapter")))
    assert queue <= adapter


def test_adapter_rule_serves_the_metric_the_hpa_asks_for() -> None:
    hpa = only(rendered(K8S_QUEUE_VARIANTS["prometheus-adapter"]), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    wanted = metric["pods"]["metric"]["name"]
    served = {}
    for rule in adapter_rules():
        (series,) = metric_names(rule["seriesQuery"])
        assert re.search(rule["name"]["matches"], series), f"{rule['name']['matches']} does not match {series}"
        served[rule["name"].get("as", series)] = rule
    assert wanted in served, f"the HPA asks for {wanted}; the adapter serves {sorted(served)}"
    rule = served[wanted]
    assert {"namespace", "pod"} <= set(rule["resources"]["overrides"]), "a Pods metric needs namespace and pod"
    for template in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert template in rule["metricsQuery"], f"the metricsQuery lacks {template}"
    assert "genai_requests_waiting" in metric_names(rule["metricsQuery"]), "in flight = running + waiting"


@pytest.mark.parametrize("variant", sorted(K8S_QUEUE_VARIANTS))
def test_queue_target_leaves_room_in_the_batch(variant: str) -> None:
    """Scale up while a pod's batch still has room: the target per pod is below what one pod decodes at once."""
    if variant == "keda":
        target = float(prometheus_trigger()["metadata"]["threshold"])
    else:
        hpa = only(rendered(K8S_QUEUE_VARIANTS[variant]), "HorizontalPodAutoscaler")
        target = float(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"])
    batch = min(int(str(setting_default("max_running_requests"))), int(str(setting_default("max_batch_size"))))
    assert 1 <= target < batch, f"target {target} generations per pod; a pod runs {batch} at once"


# --- KServe -------------------------------------------------------------------------------------


def inference_service() -> Doc:
    return only(rendered(K8S_KSERVE), "InferenceService")


# The CRD types of KSERVE_COMPONENT_FIELDS, as KServe's SDK spells them.
_SDK_TYPE = {"integer": "int", "string": "str", "object": "dict(str, str)"}


def test_the_transcribed_component_fields_are_kserves_own_with_its_types() -> None:
    predictor = kserve_types()["V1beta1PredictorSpec"]
    for name, schema in KSERVE_COMPONENT_FIELDS.items():
        assert name in predictor, f"KServe's PredictorSpec has no field {name}"
        if "$ref" in schema:
            assert schema["$ref"] == f"{KUBERNETES_DEFINITIONS}#/$defs/io.k8s.api.apps.v1.DeploymentStrategy"
            assert predictor[name] == "K8sIoApiAppsV1DeploymentStrategy"
        else:
            assert predictor[name] == _SDK_TYPE[schema["type"]], f"{name}: KServe says {predictor[name]}"


def _matches(value: Any, sdk_type: str) -> bool:
    if sdk_type == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if sdk_type in ("str", "bool"):
        return isinstance(value, {"str": str, "bool": bool}[sdk_type])
    if sdk_type == "dict(str, str)":
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    if sdk_type.startswith("list["):
        return isinstance(value, list)
    return isinstance(value, dict)  # a nested type: its own fields are Kubernetes' (the strict schema checks them)


def test_the_inference_service_uses_only_fields_kserve_declares_with_their_types() -> None:
    """Its own and its spec's and predictor's fields, against KServe's SDK (generated from KServe's CRD)."""
    isvc, types = inference_service(), kserve_types()
    for path, value, sdk in (
        ("", isvc, types["V1beta1InferenceService"]),
        ("spec.", isvc["spec"], types["V1beta1InferenceServiceSpec"]),
        ("spec.predictor.", isvc["spec"]["predictor"], types["V1beta1PredictorSpec"]),
    ):
        for key, item in value.items():
            assert key in sdk, f"{path}{key} is not a field of KServe's InferenceService"
            assert _matches(item, sdk[key]), f"{path}{key}: {item!r} is not KServe's {sdk[key]}"


def test_the_sdk_check_refuses_what_kserve_does_not_declare() -> None:
    predictor = kserve_types()["V1beta1PredictorSpec"]
    assert "replicas" not in predictor and "minReplicas" in predictor  # KServe's names, not a Deployment's
    assert not _matches("2", predictor["minReplicas"]) and not _matches(True, predictor["minReplicas"])
    assert not _matches({"a": 1}, predictor["labels"]) and _matches({"a": "1"}, predictor["labels"])


def test_kserve_container_is_the_deployments() -> None:
    deployment = only(rendered(K8S), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    predictor = inference_service()["spec"]["predictor"]
    (theirs,) = pod["containers"]
    (ours,) = predictor["containers"]
    assert ours["name"] == "kserve-container", "KServe's name for a custom predictor's serving container"
    for key in sorted((set(theirs) | set(ours)) - {"name"}):
        assert ours.get(key) == theirs.get(key), f"the predictor container's {key} differs from deployment.yaml's"
    for key in sorted(set(pod) - {"containers", "topologySpreadConstraints"}):
        assert predictor.get(key) == pod[key], f"the predictor's {key} differs from deployment.yaml's pod spec"
    assert predictor["annotations"] == deployment["spec"]["template"]["metadata"]["annotations"], "Prometheus scraping"
    assert predictor["deploymentStrategy"] == deployment["spec"]["strategy"], "rolling updates must not drop capacity"
    probes = {p: ours[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": "/health", "readinessProbe": "/ready", "livenessProbe": "/health"}


def test_kserve_scaling_and_mode() -> None:
    isvc = inference_service()
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] in {"RawDeployment", "Standard"}, (
        "Knative's serverless mode refuses the preStop hook (lifecycle) and scales to zero"
    )
    predictor = isvc["spec"]["predictor"]
    cpu_hpa = only(rendered(K8S), "HorizontalPodAutoscaler")
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (
        cpu_hpa["spec"]["minReplicas"],
        cpu_hpa["spec"]["maxReplicas"],
    )
    (cpu,) = cpu_hpa["spec"]["metrics"]
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == (
        "cpu",
        cpu["resource"]["target"]["averageUtilization"],
    )


def test_kserve_disruption_budget_and_spread_select_the_predictor_pods() -> None:
    predictor = inference_service()["spec"]["predictor"]
    labels = predictor["labels"]
    pdb = only(rendered(K8S_KSERVE), "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the PDB selects no predictor pod"
    assert pdb["spec"]["minAvailable"] <= predictor["minReplicas"]
    for spread in predictor["topologySpreadConstraints"]:
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    deployment_labels = only(rendered(K8S), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= deployment_labels.items(), (
        "the predictor's PDB must not also hold the plain Deployment's pods"
    )


# --- docs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(set(K8S_ALL_VARIANTS) - {"cpu", "gpu"}))
def test_deploy_doc_shows_how_to_apply_each_variant(variant: str) -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    folder = K8S_ALL_VARIANTS[variant].relative_to(REPO).as_posix()
    assert f"kubectl apply -k {folder}" in text, f"docs/deploy.md does not show `kubectl apply -k {folder}`"
