"""What the engine hands back to requests: the events of a generation, a next-token distribution, and
the handle a request holds. These live on the event loop's side; routers import them from here, never
from the engine, so the protocol layers do not depend on how the engine schedules.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    id: int
    token: str
    probability: float
    logprob: float


@dataclass(frozen=True)
class TokenEvent:
    index: int
    id: int
    token: str
    text: str  # the text this step adds to the output (whole characters only; may be empty)
    probability: float
    logprob: float
    special: bool
    alternatives: list[Candidate] | None = None


@dataclass(frozen=True)
class FinishEvent:
    finish_reason: str  # length | stop | eos | time_limit | cancelled
    text: str
    ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    queue_seconds: float
    time_to_first_token_seconds: float | None
    total_seconds: float

    @property
    def tokens_per_second(self) -> float | None:
        decode = self.total_seconds - (self.time_to_first_token_seconds or 0.0)
        if self.completion_tokens <= 1 or decode <= 0:
            return None
        return (self.completion_tokens - 1) / decode


@dataclass(frozen=True)
class ErrorEvent:
    message: str


EngineEvent = TokenEvent | FinishEvent | ErrorEvent


@dataclass(frozen=True)
class Distribution:
    candidates: list[Candidate]
    prompt_tokens: int


class GenerationHandle:
    """A submitted generation: async-iterate its events, or cancel it (a disconnecting client does)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self._wake = wake
        self.cancelled = False
        self.done = False

    def _emit(self, event: EngineEvent) -> None:
        """Called from the engine thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True

    def cancel(self) -> None:
        if not self.done:
            self.cancelled = True
            self._wake()

    async def events(self) -> AsyncIterator[EngineEvent]:
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, (FinishEvent, ErrorEvent)):
                self.done = True
                return

    async def result(self) -> tuple[list[TokenEvent], FinishEvent]:
        """Wait for the whole generation; cancels it if the waiting task is cancelled (client gone)."""
        tokens: list[TokenEvent] = []
        try:
            async for event in self.events():
                if isinstance(event, TokenEvent):
                    tokens.append(event)
                elif isinstance(event, FinishEvent):
                    return tokens, event
                else:
                    raise GenerationFailed(event.message)
        finally:
            if not self.done:
                self.cancel()
        raise GenerationFailed("generation ended without a result")


class GenerationFailed(RuntimeError):
    pass
