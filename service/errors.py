"""One error shape for every endpoint, so clients parse failures one way.

Every 4xx/5xx body is `{"error": {"message", "type", "param", "code", "details"}}`: the same keys as
OpenAI's error object (so `/v1` clients read it natively), plus `details` listing each invalid field.
Validation errors are 422 on the native API (FastAPI's and TGI's convention) and 400 under `/v1`.
Under `/v2` (Open Inference Protocol) the protocol fixes the body as `{"error": "<message>"}`, with 400.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.digits.exceptions import DigitInputError, DigitRequestInvalid
from service.inspect.exceptions import InspectionUnsupported
from service.language.exceptions import EngineNotReady, EngineOverloaded, InvalidRequest

log = logging.getLogger("service.errors")


class ServiceError(Exception):
    """An error the service reports to the client as a 4xx/5xx with a JSON body."""

    status_code: int = 400
    error_type: str = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status_code: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type
        self.headers = headers


class InvalidInput(ServiceError):
    """The request is well-formed JSON but its values cannot be served (422 natively, 400 under /v1)."""

    status_code = 422


class ModelNotFound(ServiceError):
    """A request names a model (or model version) this server does not serve."""

    status_code = 404
    error_type = "invalid_request_error"


class ModelNotReady(ServiceError):
    status_code = 503
    error_type = "model_not_ready"


class GenerationError(ServiceError):
    """The model failed while generating (after validation passed)."""

    status_code = 500
    error_type = "generation_error"


class TimedOut(ServiceError):
    """The request's time limit passed before its first token (TGI answers such requests 504 too)."""

    status_code = 504
    error_type = "timeout"


def error_body(
    message: str, *, error_type: str, code: int, param: str | None = None, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message, "type": error_type, "param": param, "code": code}
    if details:
        body["details"] = details
    return {"error": body}


def _is_openai_route(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def _is_oip_route(request: Request) -> bool:
    path = request.url.path
    return path == "/v2" or path.startswith("/v2/")


def _validation_status(request: Request) -> int:
    return 400 if _is_openai_route(request) or _is_oip_route(request) else 422


def _error_response(
    request: Request, body: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The shared shape, except under `/v2`, where the Open Inference Protocol fixes it as `{"error": "<message>"}`."""
    if _is_oip_route(request):
        body = {"error": body["error"]["message"]}
    return JSONResponse(body, status_code=status, headers=headers)


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """`messages.0.content`: the body's path, without the request part and without the tags pydantic
    puts in for union members (`pixels.list[float].0` is `pixels.0` to a client)."""
    parts = [
        str(p)
        for p in loc
        if p not in ("body", "query", "path", "header")
        and not (isinstance(p, str) and ("[" in p or "(" in p or p in _UNION_TAGS))
    ]
    return ".".join(parts) if parts else "body"


def _describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None, list[dict[str, Any]]]:
    details: list[dict[str, Any]] = []
    for err in exc.errors():
        field = _field_name(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            msg = f"malformed JSON: {err.get('ctx', {}).get('error', msg)}"
            field = "body"
        details.append({"field": field, "message": msg, "type": err.get("type")})
    if not details:
        return "invalid request", None, []
    first = details[0]
    message = f"{first['field']}: {first['message']}"
    if len(details) > 1:
        message += f" (and {len(details) - 1} more problem{'s' if len(details) > 2 else ''})"
    return message, first["field"], details


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to the shared JSON error shape; nothing reaches the client as an HTML page or a bare 500."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        status = exc.status_code
        if status == 422 and (_is_openai_route(request) or _is_oip_route(request)):
            status = 400
        return _error_response(
            request,
            error_body(exc.message, error_type=exc.error_type, code=status, param=exc.param),
            status,
            exc.headers,
        )

    @app.exception_handler(InvalidRequest)
    async def _invalid_request(request: Request, exc: InvalidRequest) -> JSONResponse:
        """The model side's refusal: the same body as `InvalidInput`, naming the field the client sent."""
        status = _validation_status(request)
        return _error_response(
            request, error_body(exc.message, error_type="invalid_request_error", code=status, param=exc.field), status
        )

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        """The client left (or its body deadline passed) mid-body: nobody reads this answer, but it is not a 500."""
        body = error_body(
            "client disconnected before the body was complete", error_type="invalid_request_error", code=400
        )
        return _error_response(request, body, 400)

    @app.exception_handler(EngineOverloaded)
    async def _overloaded(request: Request, exc: EngineOverloaded) -> JSONResponse:
        body = error_body(str(exc), error_type="overloaded", code=429)
        return _error_response(request, body, 429, {"Retry-After": str(exc.retry_after_seconds)})

    @app.exception_handler(InspectionUnsupported)
    async def _inspection_unsupported(request: Request, exc: InspectionUnsupported) -> JSONResponse:
        """The request is fine, but the loaded model lacks what the inspection needs."""
        return _error_response(request, error_body(str(exc), error_type="not_implemented", code=501), 501)

    @app.exception_handler(EngineNotReady)
    async def _not_ready(request: Request, exc: EngineNotReady) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_seconds)} if exc.retry_after_seconds is not None else None
        return _error_response(request, error_body(str(exc), error_type="model_not_ready", code=503), 503, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, details = _describe_validation_error(exc)
        status = _validation_status(request)
        return _error_response(
            request,
            error_body(message, error_type="invalid_request_error", code=status, param=param, details=details),
            status,
        )

    @app.exception_handler(DigitRequestInvalid)
    async def _digit_request_invalid(request: Request, exc: DigitRequestInvalid) -> JSONResponse:
        """A /classify-digit body that is not JSON or fails its schema: answered as FastAPI's own validation errors."""
        return await _validation_error(request, RequestValidationError(exc.errors))

    @app.exception_handler(DigitInputError)
    async def _digit_input(request: Request, exc: DigitInputError) -> JSONResponse:
        """An input the digit model cannot classify: 422 naming the field, or 413 for an image over the limits."""
        status, error_type = (
            (413, "payload_too_large") if exc.too_large else (_validation_status(request), "invalid_request_error")
        )
        return _error_response(
            request, error_body(exc.message, error_type=error_type, code=status, param=exc.param), status
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a body it cannot even decode (not UTF-8, say): the same invalid-body
            # error as malformed JSON, so clients and the OpenAPI schema see one status for both.
            status = _validation_status(request)
            body = error_body(
                "body: cannot be decoded as JSON (not UTF-8, nested too deeply, or a number of over 4,300 digits)",
                error_type="invalid_request_error",
                code=status,
                param="body",
            )
            return _error_response(request, body, status)
        error_type = {
            401: "authentication_error",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        return _error_response(
            request,
            error_body(str(exc.detail), error_type=error_type, code=exc.status_code),
            exc.status_code,
            getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal server error", error_type="server_error", code=500), status_code=500)
