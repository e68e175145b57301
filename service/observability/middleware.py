"""Request middleware: an `X-Request-ID` on every response, HTTP metrics, and one structured log line per request.

Plain ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched and are timed to
their last byte. It is the outermost middleware of the app: bodies refused as too large, CORS
preflights and unexpected errors still get a request id, a metric and a log line.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body
from service.observability.context import RequestContext, _current
from service.observability.metrics import ServiceMetrics

access_log = logging.getLogger("service.access")
error_log = logging.getLogger("service.errors")

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=\-]{1,128}$")
# Probes and scrapes arrive every few seconds: their lines go out at DEBUG so they do not drown the log.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"})


def route_template(scope: Scope) -> str:
    """The matched route's template (`/v2/models/{name}/infer`), never the raw path, so label values stay few."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    if scope.get("method") == "OPTIONS" and any(
        name == b"access-control-request-method" for name, _ in scope.get("headers") or []
    ):
        return "cors-preflight"  # answered by the CORS middleware before routing
    return "unmatched"


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            return candidate if _VALID_REQUEST_ID.match(candidate) else None
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, log_prompts: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.log_prompts = log_prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or uuid.uuid4().hex
        ctx = RequestContext(request_id=request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        token = _current.set(ctx)
        started = time.perf_counter()
        status = 500
        response_started = False
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                headers = [h for h in message.get("headers", []) if h[0].lower() != header[0]]
                headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.http_in_progress.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            error_log.exception(
                "unhandled error on %s %s (request %s)", scope.get("method"), scope.get("path"), request_id
            )
            if response_started:
                raise
            status = 500
            body = json.dumps(error_body("internal server error", error_type="server_error", code=500)).encode()
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.http_in_progress.dec()
            route = route_template(scope)
            method = str(scope.get("method", ""))
            if method not in _METHODS:
                method = "other"  # clients choose the method string: keep label values bounded
            self.metrics.http_requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.http_latency.labels(method=method, route=route).observe(elapsed)
            self._log(scope, ctx, route, method, status, elapsed)
            _current.reset(token)

    def _log(self, scope: Scope, ctx: RequestContext, route: str, method: str, status: int, elapsed: float) -> None:
        level = logging.DEBUG if route in _QUIET_ROUTES and status < 400 else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        client = scope.get("client")
        fields: dict[str, Any] = {
            "event": "request",
            "request_id": ctx.request_id,
            "method": method,
            "path": scope.get("path"),
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "client": f"{client[0]}:{client[1]}" if client else None,
            **ctx.fields,
        }
        if self.log_prompts and ctx.prompt_text is not None:
            fields["prompt"] = ctx.prompt_text
        summary = f"{method} {fields['path']} {status} {fields['duration_ms']}ms"
        access_log.log(level, summary, extra={"fields": fields})
