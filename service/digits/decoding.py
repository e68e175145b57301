"""`/classify-digit` request bodies into `ClassifyJob`s: a JSON body, or the parts of a multipart upload.

The router reads the HTTP request (its body bytes, its form parts) and hands them here as plain data;
problems raise `DigitRequestInvalid` (not JSON, or not the schema) or `DigitInputError` (a field that
cannot be served), which `service.errors` maps to the same answers as every other route's.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from service.digits.exceptions import DigitInputError, DigitRequestInvalid
from service.digits.jobs import ClassifyJob, DigitInput, check_batch_size, check_explain_batch_size
from service.digits.schemas import ClassifyDigitRequest

MULTIPART_FIELDS = frozenset({"file", "include_prepared", "explain"})
FormField = tuple[str, bytes | str]
"""One multipart part: its field name, and its content (bytes for a file upload, text for a plain field)."""

_TRUE_FLAGS = ("1", "true", "yes", "on")


def job_from_json(body: bytes, max_batch: int, max_explain_batch: int | None = None) -> ClassifyJob:
    """Parse and validate a JSON body (pixel arrays, base64 images, or their batch forms).

    `explain` on more than `max_explain_batch` inputs is refused (None: bounded by `max_batch` only)."""
    try:
        # json.loads, then the schema: a lone surrogate (`"\ud800"`) then reaches the schema's Unicode rule,
        # which names the field, as on every other route (pydantic's own JSON parser refuses it as bad JSON).
        payload = json.loads(body)
    except (
        ValueError,
        RecursionError,
    ) as exc:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit number, deep nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise DigitRequestInvalid(
            [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "ctx": {"error": reason}}]
        ) from None
    try:
        request = ClassifyDigitRequest.model_validate(payload)
    except ValidationError as exc:
        raise DigitRequestInvalid(
            [{**err, "loc": ("body", *err.get("loc", ()))} for err in exc.errors(include_url=False)]
        ) from None
    return request.to_job(max_batch, max_explain_batch)


def job_from_form(fields: list[FormField], max_batch: int, max_explain_batch: int | None = None) -> ClassifyJob:
    """One or more `file` parts (a batch when several, results in order) and optional `include_prepared` and
    `explain` flags (`explain` on more than `max_explain_batch` files is refused; None: no bound but `max_batch`)."""
    unknown = sorted({name for name, _ in fields} - MULTIPART_FIELDS)
    if unknown:
        raise DigitInputError(
            f"unexpected form field(s) {unknown}: send `file` (one or more) and optionally `include_prepared`, `explain`",
            param=unknown[0],
        )
    parts = [value for name, value in fields if name == "file"]
    if not parts:
        raise DigitInputError("multipart body has no `file` part: upload the image as `file`", param="file")
    check_batch_size("file", len(parts), max_batch)
    inputs: list[DigitInput] = []
    for i, part in enumerate(parts):
        param = "file" if len(parts) == 1 else f"file[{i}]"
        if not isinstance(part, bytes):
            raise DigitInputError(
                f"{param} must be a file upload (e.g. curl -F file=@digit.png), not a text field", param=param
            )
        inputs.append(DigitInput(part, param))
    explain = _flag(fields, "explain")
    if explain and max_explain_batch is not None:
        check_explain_batch_size("file", len(parts), max_explain_batch)
    return ClassifyJob(
        inputs, batch=len(parts) > 1, include_prepared=_flag(fields, "include_prepared"), explain=explain
    )


def _flag(fields: list[FormField], name: str) -> bool:
    """A true/false text field: the last one given, as a form's `get` answers; absent is false."""
    flags = [value for field, value in fields if field == name]
    flag = flags[-1] if flags else "false"
    return isinstance(flag, str) and flag.strip().lower() in _TRUE_FLAGS
