"""What the engine hands back to requests: the events of a generation, a next-token distribution, and
the handle a request holds. These live on the event loop's side; routers import them from here, never
from the engine, so the protocol layers do not depend on how the engine schedules.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from service.language.sampling import StageName


@dataclass(frozen=True)
class Candidate:
    id: int
    token: str
    probability: float
    logprob: float


@dataclass(frozen=True)
class StageSummary:
    """One sampler step's distribution (see sampler_explain.py): `kept` tokens with nonzero probability,
    `removed_mass` (total variation from the step before: the mass taken from the tokens that lost
    some), and its likeliest tokens (`top`, likeliest first, ties by lower id)."""

    name: StageName
    kept: int
    removed_mass: float
    top: list[Candidate]


@dataclass(frozen=True)
class TokenDraw:
    """How the token was taken from the last stage: greedy (its argmax, rank 0) or by the uniform `u`."""

    greedy: bool
    u: float | None
    rank: int


@dataclass(frozen=True)
class TokenExplanation:
    """Why a step's token was chosen: the model's distribution (entropy, the token's surprisal, the margin
    between the two likeliest, all in nats or probability at temperature 1), the sampler's stages, the draw."""

    entropy: float
    surprisal: float
    margin: float
    stages: list[StageSummary]
    draw: TokenDraw


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
    explain: TokenExplanation | None = None  # when the request asked (`SamplingParams.explain`)


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
    perplexity: float | None = None  # exp(mean surprisal) of the generated tokens, when explained

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
    stages: list[StageSummary] | None = None  # the sampler's steps, when asked (`explain_with`)


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
