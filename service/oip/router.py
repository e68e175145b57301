"""Open Inference Protocol (KServe v2 / Triton / MLServer) for the digit classifier, model name `mnist`.

Health and server metadata stay open for probes; the model's metadata and inference need the API key
when GENAI_API_KEYS is set. Errors under `/v2` take the protocol's shape, `{"error": "<message>"}`.

Two protocol extensions Triton's clients use: the model repository's index (`POST /v2/repository/index`,
tritonclient's `get_model_repository_index`; loading and unloading are not offered, the one model is
always loaded) and statistics (`GET /v2/models[/{name}[/versions/{version}]]/stats`, statistics.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service import __version__
from service.app_state import AppState
from service.deps import AppStateDep, DigitClassifierDep, ModelsDep
from service.digits.model import DigitClassifier
from service.errors import InvalidInput, ModelNotFound
from service.observability.context import annotate
from service.oip.schemas import (
    InferenceRequest,
    InferenceResponse,
    InferenceStatistics,
    LiveResponse,
    ModelMetadata,
    ModelReadyResponse,
    ReadyResponse,
    RepositoryIndexEntry,
    ServerMetadata,
    TensorMetadata,
    inline_schema,
)
from service.oip.statistics import ModelStatistics
from service.oip.tensors import (
    INPUT_NAME,
    MODEL_NAME,
    MODEL_VERSION,
    OUTPUT_DIGITS,
    OUTPUT_PROBABILITIES,
    decode_input,
    encode_outputs,
    parse_request,
)
from service.security import ApiKey

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": 'Invalid request: `{"error": "<message>"}`'},
    401: {"description": "Missing or wrong API key (when GENAI_API_KEYS is set)"},
    404: {"description": "Unknown model or version"},
    503: {"description": "Model not loaded yet"},
}


def _check_model(name: str, version: str | None = None) -> None:
    if name != MODEL_NAME:
        raise ModelNotFound(f"unknown model {name!r}; this server serves {MODEL_NAME!r}", param="model_name")
    if version is not None and version != MODEL_VERSION:
        raise ModelNotFound(
            f"unknown version {version!r} of {name!r}; available: [{MODEL_VERSION!r}]", param="model_version"
        )


def _not_ready(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=503)


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="genai-service", version=__version__, extensions=["binary_tensor_data", "statistics"])


@router.get("/health/live", response_model=LiveResponse, summary="Liveness (open)")
async def live() -> LiveResponse:
    return LiveResponse(live=True)


@router.get(
    "/health/ready",
    response_model=ReadyResponse,
    responses={503: {"description": "Not ready"}},
    summary="Readiness (open)",
)
async def ready(state: AppStateDep, models: ModelsDep) -> ReadyResponse | JSONResponse:
    if not state.ready or models.digits is None:
        return _not_ready({"ready": False})
    return ReadyResponse(ready=True)


# Each app's counters, beside its typed state (AppState has fixed slots); gone with the app.
_STATISTICS: weakref.WeakKeyDictionary[Any, ModelStatistics] = weakref.WeakKeyDictionary()


def statistics_of(request: Request) -> ModelStatistics:
    """This app's counters for the digit model (created at their first use)."""
    stats = _STATISTICS.get(request.app)
    if stats is None:
        stats = _STATISTICS.setdefault(request.app, ModelStatistics(name=MODEL_NAME, version=MODEL_VERSION))
    return stats


@router.post(
    "/repository/index",
    response_model=list[RepositoryIndexEntry],
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[ApiKey],
    summary="The model repository's index: each model, its version and state (Triton's repository extension)",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}
            },
        }
    },
)
async def repository_index(request: Request, state: AppStateDep, models: ModelsDep) -> list[RepositoryIndexEntry]:
    raw = await request.body()
    ready_only = False
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise InvalidInput(f"malformed JSON: {exc}", param="body") from exc
        if not isinstance(body, dict) or not isinstance(body.get("ready", False), bool):
            raise InvalidInput('the body is `{"ready": true|false}` or empty', param="ready")
        ready_only = bool(body.get("ready", False))
    loaded = state.ready and models.digits is not None
    entry = RepositoryIndexEntry(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        state="READY" if loaded else "UNAVAILABLE",
        reason=None if loaded else "the model is still loading, or the service is shutting down",
    )
    return [entry] if loaded or not ready_only else []


@router.get(
    "/models/stats",
    response_model=InferenceStatistics,
    responses=_ERRORS,
    dependencies=[ApiKey],
    summary="Inference statistics of every model (Triton's statistics extension)",
)
async def all_model_statistics(request: Request) -> dict[str, Any]:
    return {"model_stats": [statistics_of(request).to_json()]}


@router.get(
    "/models/{model_name}/stats",
    response_model=InferenceStatistics,
    responses=_ERRORS,
    dependencies=[ApiKey],
    summary="Inference statistics of one model: counts and nanoseconds per phase, per batch size",
)
async def model_statistics(model_name: str, request: Request) -> dict[str, Any]:
    _check_model(model_name)
    return {"model_stats": [statistics_of(request).to_json()]}


@router.get(
    "/models/{model_name}/versions/{model_version}/stats",
    response_model=InferenceStatistics,
    responses=_ERRORS,
    dependencies=[ApiKey],
    summary="Inference statistics of one model version",
)
async def model_version_statistics(model_name: str, model_version: str, request: Request) -> dict[str, Any]:
    _check_model(model_name, model_version)
    return {"model_stats": [statistics_of(request).to_json()]}


def _metadata(classifier: DigitClassifier) -> ModelMetadata:
    describe = classifier.describe()
    return ModelMetadata(
        name=MODEL_NAME,
        versions=[MODEL_VERSION],
        platform="numpy-mlp",
        inputs=[
            TensorMetadata(
                name=INPUT_NAME,
                datatype="FP32",
                shape=[-1, 784],
                parameters={
                    "also_accepted": {"datatype": ["FP64", "UINT8"], "shape": [[-1, 28, 28]]},
                    "value_range": "FP32/FP64: 0-1 (ink = 1), or 0-255 with parameters.value_range; UINT8: 0-255",
                },
            )
        ],
        outputs=[
            TensorMetadata(name=OUTPUT_PROBABILITIES, datatype="FP32", shape=[-1, 10]),
            TensorMetadata(name=OUTPUT_DIGITS, datatype="INT64", shape=[-1]),
        ],
        parameters={k: describe.get(k) for k in ("architecture", "training_set", "heldout_accuracy") if k in describe},
    )


@router.get(
    "/models/{model_name}",
    response_model=ModelMetadata,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[ApiKey],
    summary="Model metadata: input and output tensors",
)
async def model_metadata(model_name: str, classifier: DigitClassifierDep) -> ModelMetadata:
    _check_model(model_name)
    return _metadata(classifier)


@router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=ModelMetadata,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[ApiKey],
    summary="Model metadata of one version",
)
async def model_version_metadata(model_name: str, model_version: str, classifier: DigitClassifierDep) -> ModelMetadata:
    _check_model(model_name, model_version)
    return _metadata(classifier)


@router.get(
    "/models/{model_name}/ready", response_model=ModelReadyResponse, responses=_ERRORS, summary="Model readiness (open)"
)
async def model_ready(model_name: str, state: AppStateDep, models: ModelsDep) -> ModelReadyResponse | JSONResponse:
    _check_model(model_name)
    if not state.ready or models.digits is None:
        return _not_ready({"name": model_name, "ready": False})
    return ModelReadyResponse(name=model_name, ready=True)


@router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    response_model=ModelReadyResponse,
    responses=_ERRORS,
    summary="Model version readiness (open)",
)
async def model_version_ready(
    model_name: str, model_version: str, state: AppStateDep, models: ModelsDep
) -> ModelReadyResponse | JSONResponse:
    _check_model(model_name, model_version)
    return await model_ready(model_name, state, models)


# The body is read raw (the binary tensor extension is not JSON), so its schema is declared here. Binary
# bodies (a JSON header of `Inference-Header-Content-Length` bytes, then raw little-endian tensors) are
# described in words: as an OpenAPI media type, any byte string would match.
_INFER_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(InferenceRequest)}}},
    "description": (
        "Tensors as JSON `data` (flat or nested, row-major), or with the binary tensor extension: the JSON header, "
        "its length in the `Inference-Header-Content-Length` header, then each input's raw little-endian bytes "
        "(`parameters.binary_data_size`). Ask for binary outputs with `parameters.binary_data` on an output or "
        "`parameters.binary_data_output` on the request."
    ),
}


def _classify(
    classifier: DigitClassifier, infer_request: InferenceRequest, binary: bytes, max_batch: int
) -> tuple[np.ndarray, int, int]:
    """Decode the input tensor and run the model: (N, 10) probabilities, and the nanoseconds each took.
    Blocking: runs in a worker thread."""
    started = time.perf_counter_ns()
    decoded = decode_input(infer_request, binary, max_batch)
    decoded_at = time.perf_counter_ns()
    probabilities = np.asarray(classifier.predict_proba(decoded.images), dtype=np.float64)
    return probabilities, decoded_at - started, time.perf_counter_ns() - decoded_at


async def _infer(
    model_name: str, model_version: str | None, request: Request, classifier: DigitClassifier, state: AppState
) -> Response:
    _check_model(model_name, model_version)
    stats = statistics_of(request)
    started = time.perf_counter_ns()
    try:
        response, batch_size, input_ns, infer_ns, output_ns = await _run_inference(request, classifier, state)
    except BaseException:
        stats.record_failure(time.perf_counter_ns() - started)
        raise
    stats.record_success(batch_size, time.perf_counter_ns() - started, input_ns, infer_ns, output_ns)
    return response


async def _run_inference(
    request: Request, classifier: DigitClassifier, state: AppState
) -> tuple[Response, int, int, int, int]:
    """The response, the batch size, and the nanoseconds spent decoding, inferring and encoding."""
    parse_started = time.perf_counter_ns()
    raw = await request.body()
    infer_request, binary = parse_request(raw, request.headers.get("inference-header-content-length"))
    parse_ns = time.perf_counter_ns() - parse_started
    # Off the event loop, as /classify-digit: decoding a large JSON tensor and the forward pass are CPU work.
    probabilities, decode_ns, infer_ns = await asyncio.to_thread(
        _classify, classifier, infer_request, binary, state.settings.digits_max_batch
    )
    output_started = time.perf_counter_ns()
    digits = probabilities.argmax(axis=1)
    state.metrics.record_digits(digits.tolist(), endpoint="/v2/models/mnist/infer")
    annotate(model=MODEL_NAME, images=int(digits.shape[0]))
    encoded = encode_outputs(infer_request, probabilities, digits)
    response = InferenceResponse(
        model_name=MODEL_NAME, model_version=MODEL_VERSION, id=infer_request.id, outputs=encoded.outputs
    )
    body = response.model_dump_json(exclude_none=True).encode()
    if not encoded.binary:
        answer = Response(body, media_type="application/json")
    else:
        answer = Response(
            body + b"".join(encoded.binary),
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(body))},
        )
    batch = int(digits.shape[0])
    return answer, batch, parse_ns + decode_ns, infer_ns, time.perf_counter_ns() - output_started


@router.post(
    "/models/{model_name}/infer",
    response_model=InferenceResponse,
    responses=_ERRORS,
    dependencies=[ApiKey],
    openapi_extra=_INFER_DOC,
    summary="Classify digits: [N,784] or [N,28,28] pixels in, probabilities [N,10] and digits [N] out",
)
async def infer(model_name: str, request: Request, classifier: DigitClassifierDep, state: AppStateDep) -> Response:
    return await _infer(model_name, None, request, classifier, state)


@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    response_model=InferenceResponse,
    responses=_ERRORS,
    dependencies=[ApiKey],
    openapi_extra=_INFER_DOC,
    summary="Classify digits with one model version",
)
async def infer_version(
    model_name: str, model_version: str, request: Request, classifier: DigitClassifierDep, state: AppStateDep
) -> Response:
    return await _infer(model_name, model_version, request, classifier, state)
