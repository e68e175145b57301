"""Server-Sent Events responses, configured the same way for every streaming route, and the rule every
generating route shares for a generation that ends before its first token (504 or 500, not a 200)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import Request
from sse_starlette.sse import EventSourceResponse

from service.config import Settings
from service.disconnect import cancel_on_disconnect
from service.errors import GenerationError, TimedOut
from service.language.events import ErrorEvent, FinishEvent

T = TypeVar("T")


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


def raise_if_failed_before_first_token(event: object) -> None:
    """A generation that failed, or whose time limit passed before it produced a token, is an error
    status (500, 504 with Retry-After as TGI answers it), never a 200 carrying nothing."""
    if isinstance(event, ErrorEvent):
        raise GenerationError(event.message)
    if isinstance(event, FinishEvent) and event.finish_reason == "time_limit" and event.completion_tokens == 0:
        raise TimedOut(
            f"no token within the time limit of the request (GENAI_REQUEST_TIMEOUT_S); waited {event.total_seconds:.1f} s",
            headers={"Retry-After": "1"},
        )


def _itself(item: Any) -> Any:
    return item


async def first_event_checked(
    request: Request,
    events: AsyncIterator[T],
    cancel: Callable[[], None],
    engine_event: Callable[[T], object] = _itself,
) -> AsyncGenerator[T, None]:
    """Wait for a stream's first event before answering, so that a generation that never gets a token
    still gets a proper status instead of a 200 stream that carries only an error. Returns the events
    with the first one put back. `engine_event` picks the engine's event out of an item (streams that
    merge several choices pair each event with its choice).

    Raises ClientDisconnected if the client leaves first, or the error of
    `raise_if_failed_before_first_token`; either way the generation is cancelled (it must not run on for
    nobody) and `events` closed."""
    try:
        first = await cancel_on_disconnect(request, anext(events, None))
        if first is not None:
            raise_if_failed_before_first_token(engine_event(first))
    except BaseException:
        cancel()
        await _close(events)
        raise
    return _prepend(first, events)


async def _close(events: AsyncIterator[T]) -> None:
    if isinstance(events, AsyncGenerator):
        await events.aclose()


async def _prepend(first: T | None, rest: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    try:
        if first is not None:
            yield first
        async for item in rest:
            yield item
    finally:
        await _close(rest)
