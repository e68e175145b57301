"""Schemathesis against the service's own OpenAPI schema (`/openapi.json`): every operation and every
request media type it declares (JSON, multipart uploads, binary tensors), with valid and invalid input.

No fuzzed request may get a 5xx; every response must be one the schema declares, with the declared
content type, headers and body shape; input the schema forbids must get a 4xx.

In process (schemathesis' ASGI client) against `fuzz_app`, whose small limits keep every valid
generation to a few tokens, so the folder stays CI-sized on two cores. Cases are derandomized: a CI
failure reproduces locally, and schemathesis prints the failing request as a curl command.
"""

from __future__ import annotations

import base64
import io
from typing import Any, cast

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fuzz_limits import operations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.oip.tensors import MODEL_NAME, MODEL_VERSION

MAX_EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 25}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def homogeneous_tuples_as_items(node: Any) -> Any:
    """Spell fixed-length tuples whose positions share one schema (pydantic's `tuple[int, int]`) with
    `items` + `minItems`/`maxItems`: the same constraint, but one schemathesis can validate responses with.

    schemathesis 4.32 rewrites `prefixItems` into draft-4 `items: [...]` when preparing response schemas,
    then validates them as OpenAPI 3.1 (draft 2020-12), where a list under `items` is invalid, so every
    response with a tuple fails as "Invalid Schema Object" (schemathesis issues #3842, #4099)."""
    if isinstance(node, list):
        return [homogeneous_tuples_as_items(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: homogeneous_tuples_as_items(value) for key, value in node.items()}
    prefix = node.get("prefixItems")
    if (
        isinstance(prefix, list)
        and prefix
        and all(item == prefix[0] for item in prefix)
        and node.get("items", False) is False
        and node.get("minItems") == node.get("maxItems") == len(prefix)
    ):
        node.pop("prefixItems")
        node["items"] = prefix[0]
    return node


@pytest.fixture(scope="session")
def fuzz_schema(fuzz_app: FastAPI) -> schemathesis.BaseSchema:
    """The schema the running app serves at `/openapi.json` (tuples respelled, see above)."""
    served = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app).raw_schema
    loaded = schemathesis.openapi.from_dict(homogeneous_tuples_as_items(served))
    loaded.app = fuzz_app  # requests go in process, through schemathesis' ASGI transport
    loaded.location = "/openapi.json"
    # API keys are off in `fuzz_app` (tests/security covers them): no point mutating the Authorization header.
    loaded.config.generation.update(with_security_parameters=False)
    return loaded


@pytest.fixture(scope="session")
def served_names(fuzz_app: FastAPI) -> dict[str, str]:
    """Path parameter values that name what the app serves."""
    from schemathesis.python import asgi

    # cast: schemathesis types ASGI scopes and messages as dict, FastAPI (like the ASGI spec) as MutableMapping.
    with asgi.get_client(cast(asgi.ASGIApp, fuzz_app)) as http:
        model_id = http.get("/v1/models").json()["data"][0]["id"]
    return {"model_id": model_id, "model_name": MODEL_NAME, "model_version": MODEL_VERSION}


def open_finding(case: schemathesis.Case[Any]) -> str | None:
    """Inputs of a fuzz finding not fixed yet (each pinned by a strict xfail in test_fuzz_findings.py),
    left out of generation so the fuzzing keeps guarding everything else. Delete an entry with its fix."""
    del case  # every finding so far is fixed
    return None


def _cases() -> list[Any]:
    params = []
    for method, path, media, violable in operations():
        # Random path names only ever reach the 404 branch: "served-names" runs use the served ones to get past it.
        has_path_parameters = "{" in path
        runs = [(GenerationMode.POSITIVE, False)]
        if has_path_parameters:
            runs.append((GenerationMode.POSITIVE, True))
        if violable:
            runs.append((GenerationMode.NEGATIVE, has_path_parameters))
        for mode, pinned in runs:
            label = (
                f"{method} {path}"
                + (f" {media}" if media else "")
                + f" {mode.value}"
                + (" served-names" if pinned else "")
            )
            params.append(pytest.param(method, path, media, mode, pinned, id=label))
    return params


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "media", "mode", "pinned"), _cases())
def test_openapi_operation(
    fuzz_schema: schemathesis.BaseSchema,
    served_names: dict[str, str],
    method: str,
    path: str,
    media: str | None,
    mode: GenerationMode,
    pinned: bool,
) -> None:
    operation = fuzz_schema[path][method]
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    path_parameters = (
        {name: value for name, value in served_names.items() if "{" + name + "}" in path} if pinned else None
    )

    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
    if media is not None:  # one test per request media type (JSON and multipart, JSON and binary tensors)
        strategy = strategy.filter(lambda case: case.media_type == media)
    strategy = strategy.filter(lambda case: open_finding(case) is None)

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES[mode],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(checks=checks, timeout=60)
        statuses.append(response.status_code)

    statuses: list[int] = []
    fuzz()
    print(
        f"{method} {path} {media or ''} {mode.value} pinned={pinned}: {len(statuses)} requests, statuses {sorted(set(statuses))}"
    )
    assert statuses, "no request was generated"
    if mode is GenerationMode.NEGATIVE:
        assert any(400 <= status < 500 for status in statuses), "no schema-violating request was generated"


@st.composite
def encoded_drawings(draw: st.DrawFn) -> bytes:
    """A real encoded picture (random strokes on a background, any polarity) in an accepted format."""
    height, width = draw(st.integers(1, 120)), draw(st.integers(1, 120))
    background, ink = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    pixels = np.full((height, width), background, dtype=np.uint8)
    for _ in range(draw(st.integers(0, 3))):
        r0, r1 = sorted(draw(st.tuples(st.integers(0, height - 1), st.integers(0, height - 1))))
        c0, c1 = sorted(draw(st.tuples(st.integers(0, width - 1), st.integers(0, width - 1))))
        pixels[r0 : r1 + 1, c0 : c1 + 1] = ink
    image = Image.fromarray(pixels).convert(draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1"])))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP"]))
    out = io.BytesIO()
    (image.convert("RGB") if fmt == "JPEG" else image).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("media", ["multipart/form-data", "application/json"])
def test_classify_digit_with_real_images(fuzz_schema: schemathesis.BaseSchema, fuzz_app: FastAPI, media: str) -> None:
    """Random bytes (what schemathesis sends for `format: binary`) never get past decoding: here the uploads
    (multipart `file` parts, or base64 `image`/`images` in JSON) are real pictures, 1 to max-batch + 1 of them."""
    operation = fuzz_schema["/classify-digit"]["POST"]
    limit = fuzz_app.state.settings.digits_max_batch

    @given(files=st.lists(encoded_drawings(), min_size=1, max_size=limit + 1), include_prepared=st.booleans())
    @settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def upload(files: list[bytes], include_prepared: bool) -> None:
        if media == "multipart/form-data":
            body: dict[str, Any] = {"file": files, "include_prepared": include_prepared}
        elif len(files) == 1:
            body = {"image": base64.b64encode(files[0]).decode(), "include_prepared": include_prepared}
        else:
            body = {"images": [base64.b64encode(f).decode() for f in files], "include_prepared": include_prepared}
        case = operation.Case(body=body, media_type=media)
        response = case.call_and_validate(checks=CHECKS, timeout=60)
        statuses.append(response.status_code)
        if len(files) > limit:
            assert response.status_code == 422, response.text
        elif response.status_code == 200:
            results = response.json()["results"] if len(files) > 1 else [response.json()]
            assert len(results) == len(files)
            assert all((r.get("prepared") is not None) == include_prepared for r in results)
        else:  # blank pictures (no strokes, or ink = background) are the only refusals
            assert response.status_code == 422 and "blank" in response.text, response.text

    statuses: list[int] = []
    upload()
    assert 200 in statuses and 422 in statuses, statuses
