"""`POST /classify-digit` and `GET /inspect/digits/weights`: HTTP in, `DigitClassifier` calls, HTTP out.

One route takes both JSON (pixel arrays, base64 images, their batch forms) and multipart file uploads,
so it reads the body itself according to Content-Type and hands the bytes (or the form's parts) to
`service.digits.decoding`; `openapi_extra` documents both bodies in /docs. The work itself (decoding
images, the forward pass, explanations) runs in a worker thread (`service.digits.jobs.run`), and so does
encoding an explained answer (~85 KB of JSON per digit) and the weights (1.7 MB).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.config import Settings
from service.deps import DigitClassifierDep, DigitReferencesDep, MetricsDep, SettingsDep
from service.digits import jobs
from service.digits.decoding import MULTIPART_FIELDS, FormField, job_from_form, job_from_json
from service.digits.model import DigitClassifier
from service.digits.schemas import (
    ClassifyDigitRequest,
    DigitBatchResponse,
    DigitPrediction,
    DigitWeightsResponse,
    prediction_bodies,
)
from service.errors import InvalidInput, ServiceError

router = APIRouter(tags=["digits"])

# Read as JSON: JSON itself, and what `curl -d` sends without a -H (form-urlencoded) or nothing at all.
_JSON_CONTENT_TYPES = {"application/json", "application/x-www-form-urlencoded", ""}


def _openapi_body() -> dict[str, Any]:
    """Both request bodies for /docs: the JSON model (inlined; it has no nested definitions) and the upload."""
    json_schema = ClassifyDigitRequest.model_json_schema()
    examples = json_schema.pop("examples", [])
    names = ["pixels (28 rows of 28)", "image (base64 PNG)", "images (batch)", "image, explained"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": json_schema,
                    "examples": {
                        name: {"summary": name, "value": value} for name, value in zip(names, examples, strict=True)
                    },
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
                            "explain": {
                                "type": "boolean",
                                "default": False,
                                "description": "Explain each result, as `explain` in a JSON body.",
                            },
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
        "centre of mass in 28x28). With `explain: true` each result also carries `explain`: what the network saw "
        "(hidden activations, saliency maps, the hidden units that added most to the digit's logit, the nearest "
        "training digits). Invalid input answers 422, oversized images 413, other content types 415."
    ),
    openapi_extra=_openapi_body(),
    responses={
        413: {"description": "Image (or batch body) larger than the configured limits"},
        415: {"description": "Body is neither JSON nor multipart/form-data"},
        422: {
            "description": "Invalid input: wrong length, out-of-range values, undecodable or blank image, bad batch size, "
            "`explain` on more than `digits_max_explain_batch` inputs"
        },
        503: {"description": "The digit model is not loaded yet"},
    },
)
async def classify_digit(
    request: Request,
    classifier: DigitClassifierDep,
    references: DigitReferencesDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> DigitPrediction | DigitBatchResponse | Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    max_batch, max_explain = settings.digits_max_batch, settings.digits_max_explain_batch
    if content_type == "multipart/form-data":
        job = job_from_form(await _form_fields(request, settings), max_batch, max_explain)
    elif content_type in _JSON_CONTENT_TYPES or content_type.endswith("+json"):
        # application/json, or nothing / form-urlencoded as `curl -d` sends it: parse as JSON
        job = job_from_json(await request.body(), max_batch, max_explain)
    else:
        raise ServiceError(
            f"unsupported Content-Type {content_type!r}: send application/json or multipart/form-data with a `file` part",
            param="content-type",
            status_code=415,
            error_type="unsupported_media_type",
        )

    result = await asyncio.to_thread(jobs.run, classifier, job, jobs.ImageLimits.from_settings(settings), references)

    metrics.record_digits([p.digit for p in result.predictions], endpoint="/classify-digit")
    if job.explain:  # ~85 KB of JSON per digit: built and encoded off the event loop
        return Response(await asyncio.to_thread(_encoded_answer, job, result), media_type="application/json")
    results = prediction_bodies(job, result)
    return DigitBatchResponse(results=results) if job.batch else results[0]


def _encoded_answer(job: jobs.ClassifyJob, result: jobs.JobResult) -> bytes:
    """The answer's JSON, as the route's response model would encode it (fields left out when None)."""
    results = prediction_bodies(job, result)
    answer: DigitPrediction | DigitBatchResponse = DigitBatchResponse(results=results) if job.batch else results[0]
    return answer.model_dump_json(exclude_none=True).encode()


@router.get(
    "/inspect/digits/weights",
    response_model=DigitWeightsResponse,
    summary="Every first-hidden-layer unit's incoming weights, as 28x28 images",
    description=(
        "What each unit of the digit model's first hidden layer looks for: its 784 weights from the pixels as a "
        "28x28 image (4 significant digits), its bias, and its weights onward (to the ten logits, for the shipped "
        "784-256-10 model). About 1.7 MB of JSON for the shipped model."
    ),
    responses={503: {"description": "The digit model is not loaded yet"}},
)
async def digit_weights(classifier: DigitClassifierDep) -> Response:
    return Response(await asyncio.to_thread(_encoded_weights, classifier), media_type="application/json")


def _encoded_weights(classifier: DigitClassifier) -> bytes:
    return DigitWeightsResponse.of(classifier).model_dump_json().encode()


async def _form_fields(request: Request, settings: Settings) -> list[FormField]:
    """The multipart parts in order: an upload's bytes (at most one past the image limit), a text field's text."""
    limit = settings.digits_max_batch
    try:
        async with request.form(max_files=limit, max_fields=len(MULTIPART_FIELDS) + limit) as form:
            return [
                (
                    name,
                    await value.read(settings.digits_max_image_bytes + 1) if isinstance(value, UploadFile) else value,
                )
                for name, value in form.multi_items()
            ]
    except StarletteHTTPException as exc:  # Starlette's 400 for a malformed body or too many files/fields
        raise InvalidInput(f"multipart body rejected: {exc.detail}", param="file") from None
