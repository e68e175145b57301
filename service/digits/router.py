"""`POST /classify-digit`: HTTP in, `DigitClassifier` calls, HTTP out.

One route takes both JSON (pixel arrays, base64 images, their batch forms) and multipart file uploads,
so it reads the body itself according to Content-Type; `openapi_extra` documents both bodies in /docs.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.config import Settings
from service.deps import DigitClassifierDep, SettingsDep
from service.digits.model import DigitClassifier
from service.digits.preprocess import (
    MIN_CONTRAST,
    DigitInputError,
    decode_base64,
    image_bytes_to_array,
    pixels_to_array,
    prepare_gray,
)
from service.digits.schemas import ClassifyDigitRequest, DigitBatchResponse, DigitPrediction
from service.errors import InvalidInput, ServiceError

router = APIRouter(tags=["digits"])

_MULTIPART_FIELDS = {"file", "include_prepared"}
# Read as JSON: JSON itself, and what `curl -d` sends without a -H (form-urlencoded) or nothing at all.
_JSON_CONTENT_TYPES = {"application/json", "application/x-www-form-urlencoded", ""}


@dataclass
class _Input:
    """One digit to classify, not yet decoded (decoding happens off the event loop)."""

    kind: Literal["pixels", "base64", "bytes"]
    value: Any
    param: str


@dataclass
class _Job:
    inputs: list[_Input]
    batch: bool
    value_range: Literal["0-255", "0-1"] = "0-255"
    prepare: bool = False
    include_prepared: bool = False


def _openapi_body() -> dict[str, Any]:
    """Both request bodies for /docs: the JSON model (inlined; it has no nested definitions) and the upload."""
    json_schema = ClassifyDigitRequest.model_json_schema()
    examples = json_schema.pop("examples", [])
    names = ["pixels (28 rows of 28)", "image (base64 PNG)", "images (batch)"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": json_schema,
                    "examples": {name: {"summary": name, "value": value} for name, value in zip(names, examples)},
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "description": "A PNG or JPEG image file; send several `file` parts for a batch (results in order).",
                            },
                            "include_prepared": {"type": "boolean", "default": False},
                        },
                    }
                },
            },
        }
    }


@router.post(
    "/classify-digit",
    response_model=DigitPrediction | DigitBatchResponse,
    response_model_exclude_none=True,
    summary="Classify handwritten digits (pixel arrays, base64 images or uploaded files)",
    description=(
        "Send **either** JSON with exactly one of `pixels`, `pixels_batch`, `image`, `images`, **or** "
        "`multipart/form-data` with one or more `file` parts. A single input answers `{digit, confidence, "
        "probabilities}`; a batch (`pixels_batch`, `images`, several files) answers `{results: [...]}` in input order. "
        "Images are prepared like MNIST (grayscale, inverted if light background, cropped, fit to 20x20, centred by "
        "centre of mass in 28x28). Invalid input answers 422, oversized images 413, other content types 415."
    ),
    openapi_extra=_openapi_body(),
    responses={
        413: {"description": "Image (or batch body) larger than the configured limits"},
        415: {"description": "Body is neither JSON nor multipart/form-data"},
        422: {"description": "Invalid input: wrong length, out-of-range values, undecodable or blank image, bad batch size"},
        503: {"description": "The digit model is not loaded yet"},
    },
)
async def classify_digit(
    request: Request, classifier: DigitClassifierDep, settings: SettingsDep
) -> DigitPrediction | DigitBatchResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        job = await _read_multipart(request, settings)
    elif content_type in _JSON_CONTENT_TYPES or content_type.endswith("+json"):
        # application/json, or nothing / form-urlencoded as `curl -d` sends it: parse as JSON
        job = _read_json(await request.body(), settings)
    else:
        raise ServiceError(
            f"unsupported Content-Type {content_type!r}: send application/json or multipart/form-data with a `file` part",
            param="content-type",
            status_code=415,
            error_type="unsupported_media_type",
        )

    try:
        predictions, prepared = await asyncio.to_thread(_classify, classifier, job, settings)
    except DigitInputError as exc:
        if exc.too_large:
            raise ServiceError(exc.message, param=exc.param, status_code=413, error_type="payload_too_large") from None
        raise InvalidInput(exc.message, param=exc.param) from None

    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.record_digits([p.digit for p in predictions], endpoint="/classify-digit")
    results = [
        DigitPrediction(
            digit=p.digit,
            confidence=p.confidence,
            probabilities=p.probabilities,
            prepared=np.rint(arr * 255).astype(int).tolist() if job.include_prepared else None,
        )
        for p, arr in zip(predictions, prepared)
    ]
    return DigitBatchResponse(results=results) if job.batch else results[0]


def _read_json(body: bytes, settings: Settings) -> _Job:
    try:
        # json.loads, then the schema: a lone surrogate (`"\ud800"`) then reaches the schema's Unicode rule,
        # which names the field, as on every other route (pydantic's own JSON parser refuses it as bad JSON).
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit number, deep nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "ctx": {"error": reason}}]) from None
    try:
        req = ClassifyDigitRequest.model_validate(payload)
    except ValidationError as exc:
        errors = [{**err, "loc": ("body", *err.get("loc", ()))} for err in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None
    options = {"value_range": req.value_range, "prepare": req.prepare, "include_prepared": req.include_prepared}
    if req.pixels is not None:
        return _Job([_Input("pixels", req.pixels, "pixels")], batch=False, **options)
    if req.image is not None:
        return _Job([_Input("base64", req.image, "image")], batch=False, **options)
    if req.pixels_batch is not None:
        _check_batch_size("pixels_batch", len(req.pixels_batch), settings)
        return _Job([_Input("pixels", v, f"pixels_batch[{i}]") for i, v in enumerate(req.pixels_batch)], batch=True, **options)
    assert req.images is not None  # the schema guarantees exactly one input field
    _check_batch_size("images", len(req.images), settings)
    return _Job([_Input("base64", v, f"images[{i}]") for i, v in enumerate(req.images)], batch=True, **options)


async def _read_multipart(request: Request, settings: Settings) -> _Job:
    try:
        return await _parse_multipart(request, settings)
    except StarletteHTTPException as exc:  # Starlette's 400 for a malformed body or too many files/fields
        raise InvalidInput(f"multipart body rejected: {exc.detail}", param="file") from None


async def _parse_multipart(request: Request, settings: Settings) -> _Job:
    limit = settings.digits_max_batch
    async with request.form(max_files=limit, max_fields=len(_MULTIPART_FIELDS) + limit) as form:
        unknown = sorted(set(form.keys()) - _MULTIPART_FIELDS)
        if unknown:
            raise InvalidInput(f"unexpected form field(s) {unknown}: send `file` (one or more) and optionally `include_prepared`", param=unknown[0])
        parts = form.getlist("file")
        if not parts:
            raise InvalidInput("multipart body has no `file` part: upload the image as `file`", param="file")
        _check_batch_size("file", len(parts), settings)
        inputs: list[_Input] = []
        for i, part in enumerate(parts):
            param = "file" if len(parts) == 1 else f"file[{i}]"
            if not isinstance(part, UploadFile):
                raise InvalidInput(f"{param} must be a file upload (e.g. curl -F file=@digit.png), not a text field", param=param)
            data = await part.read(settings.digits_max_image_bytes + 1)
            inputs.append(_Input("bytes", data, param))
        flag = form.get("include_prepared", "false")
        include_prepared = isinstance(flag, str) and flag.strip().lower() in ("1", "true", "yes", "on")
    return _Job(inputs, batch=len(parts) > 1, include_prepared=include_prepared)


def _check_batch_size(param: str, n: int, settings: Settings) -> None:
    if n == 0:
        raise InvalidInput(f"{param} is empty: give at least one input", param=param)
    if n > settings.digits_max_batch:
        raise InvalidInput(
            f"{param} has {n} inputs; at most {settings.digits_max_batch} per request (GENAI_DIGITS_MAX_BATCH)", param=param
        )


def _to_array(item: _Input, job: _Job, settings: Settings) -> np.ndarray:
    """Decode and prepare one input into the model's 28x28 form (runs in a worker thread)."""
    limits = {"max_bytes": settings.digits_max_image_bytes, "max_pixels": settings.digits_max_image_pixels}
    if item.kind == "pixels":
        arr = pixels_to_array(item.value, value_range=job.value_range, param=item.param)
        if float(arr.max() - arr.min()) < MIN_CONTRAST:  # all zeros, or one grey: as a blank image is
            raise DigitInputError(f"{item.param} is blank: no digit found (every pixel has the same value)", param=item.param)
        # prepare_gray finds the polarity from the border, so ink-high and ink-low arrays both work.
        return prepare_gray(arr, param=item.param) if job.prepare else arr
    data = decode_base64(item.value, max_bytes=settings.digits_max_image_bytes, param=item.param) if item.kind == "base64" else item.value
    return image_bytes_to_array(data, param=item.param, **limits)


def _classify(classifier: DigitClassifier, job: _Job, settings: Settings) -> tuple[list[Any], list[np.ndarray]]:
    arrays = [_to_array(item, job, settings) for item in job.inputs]
    return classifier.predict(np.stack(arrays)), arrays
