"""KServe's API types, read from its Python SDK's generated models (openapi-generator output of KServe's CRD).

`make install-dev` downloads the pinned SDK wheel (Makefile KSERVE_SDK) into .venv/wheels without
installing it: installing would pull dependencies that downgrade the service's. Its model modules are
read as source (each class's `openapi_types` and `attribute_map` literals), never imported.
"""

from __future__ import annotations

import ast
import functools
import sys
import zipfile
from pathlib import Path

from deploy_files import makefile_variable

# class -> {JSON field name: the SDK's type text ("int", "str", "dict(str, str)", "list[V1Container]", a class)}
KServeTypes = dict[str, dict[str, str]]
MODULES = {
    "V1beta1InferenceService": "v1beta1_inference_service",
    "V1beta1InferenceServiceSpec": "v1beta1_inference_service_spec",
    "V1beta1PredictorSpec": "v1beta1_predictor_spec",
}


def sdk_wheel() -> Path:
    version = makefile_variable("KSERVE_SDK").split("==")[1]
    wheel = Path(sys.prefix) / "wheels" / f"kserve-{version}-py3-none-any.whl"
    assert wheel.is_file(), f"{wheel} is missing: `make install-dev` downloads it"
    return wheel


def _class_literals(source: str, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """`openapi_types` and `attribute_map` of class `name` in a generated module."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            found: dict[str, dict[str, str]] = {}
            for statement in node.body:
                if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
                    target = statement.targets[0].id
                    if target in ("openapi_types", "attribute_map"):
                        found[target] = ast.literal_eval(statement.value)
            return found["openapi_types"], found["attribute_map"]
    raise AssertionError(f"no class {name} in the SDK source")


@functools.cache
def kserve_types() -> KServeTypes:
    types: KServeTypes = {}
    with zipfile.ZipFile(sdk_wheel()) as wheel:
        for name, module in MODULES.items():
            source = wheel.read(f"kserve/models/{module}.py").decode()
            openapi_types, attribute_map = _class_literals(source, name)
            types[name] = {attribute_map[attr]: kind for attr, kind in openapi_types.items()}
    return types
