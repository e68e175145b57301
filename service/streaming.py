"""Server-Sent Events responses, configured the same way for every streaming route."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse

from service.config import Settings


def event_stream_response(events: AsyncIterator[Any], settings: Settings) -> EventSourceResponse:
    """SSE with keep-alive pings while silent, no proxy buffering, and a graceful shutdown: on SIGTERM a
    stream in flight may run on for GENAI_SHUTDOWN_GRACE_S before it is cut (sse-starlette's default
    would cut it at once)."""
    return EventSourceResponse(
        events,
        ping=int(max(1, settings.stream_ping_s)),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        shutdown_grace_period=settings.shutdown_grace_s,
    )
