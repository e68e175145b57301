"""`/v1` streams: the choices' engine events as OpenAI's chunks, one `data:` line each, then `[DONE]`.

The router waits for the first event before it answers (`started_choices`), so a stream whose time
limit passes before its first token is a 504, as the native `/generate` answers it, not a 200 stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable

from fastapi import Request

from service.language.events import EngineEvent, ErrorEvent, FinishEvent, GenerationHandle, TokenEvent
from service.language.model import LanguageModel
from service.observability.context import add_usage
from service.openai.responses import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    FinishReason,
    StreamError,
    StreamErrorDetail,
)
from service.openai.schemas import ChatCompletionRequest, CompletionRequest, StreamOptions
from service.openai.serving import (
    ChoiceSpec,
    LegacyLogprobs,
    Prompt,
    event_logprob,
    finish_reason,
    is_end_token,
    merged_events,
    new_id,
    now,
)
from service.schemas import Usage
from service.streaming import first_event_checked

ChoiceEvents = AsyncGenerator[tuple[int, EngineEvent], None]
DONE = "[DONE]"


async def started_choices(request: Request, handles: dict[int, GenerationHandle]) -> ChoiceEvents:
    """The choices' events once the first has come: raises the native stream's 504 (or 500) if the
    generation ended before a token, ClientDisconnected if the client left first (all choices cancelled)."""

    def cancel_all() -> None:
        for handle in handles.values():
            handle.cancel()

    return await first_event_checked(request, merged_events(handles), cancel_all, engine_event=lambda item: item[1])


class StreamUsage:
    """What a /v1 stream says about usage, as OpenAI sends it.

    Without `stream_options.include_usage` no chunk has a `usage` field. With it, every chunk carries
    `"usage": null` and a last chunk with empty `choices` carries the usage of the whole request, so a
    client that adds up every chunk's usage (LangChain's `stream_usage=True`) counts each token once.
    With vLLM's `continuous_usage_stats` as well, every chunk carries the request's usage so far instead
    of `null` (all choices together: the completion tokens generated up to that chunk, end tokens included).
    """

    def __init__(self, options: StreamOptions | None, prompt_tokens: int) -> None:
        self.include = bool(options is not None and options.include_usage)
        self.continuous = self.include and bool(options is not None and options.continuous_usage_stats)
        self.prompt_tokens = prompt_tokens
        self._generated: dict[int, int] = {}  # choice index -> completion tokens so far

    def count(self, index: int, completion_tokens: int) -> None:
        self._generated[index] = completion_tokens

    def total(self) -> Usage:
        return Usage.of(self.prompt_tokens, sum(self._generated.values()))

    def so_far(self) -> Usage | None:
        """The `usage` of a chunk with choices: the usage so far, or `null` (left out without include_usage)."""
        return self.total() if self.continuous else None

    def encode(self, chunk: CompletionChunk | ChatCompletionChunk) -> str:
        return chunk.model_dump_json(exclude=None if self.include else {"usage"})


async def stream_choices(
    events: ChoiceEvents,
    handles: dict[int, GenerationHandle],
    lm: LanguageModel,
    usage: StreamUsage,
    *,
    token_chunk: Callable[[int, TokenEvent], CompletionChunk | ChatCompletionChunk | None],
    finish_chunk: Callable[[int, FinishReason], CompletionChunk | ChatCompletionChunk],
    usage_chunk: Callable[[Usage], CompletionChunk | ChatCompletionChunk],
) -> AsyncIterator[str]:
    """What every /v1 stream shares: the choices' events as they come, the usage counted as tokens
    arrive (chunk builders read it through `usage.so_far()`), the usage-only last chunk when
    `include_usage` asks for it, an error chunk if generation fails, `[DONE]` at the end, and every
    generation cancelled if the client leaves early. Endpoints only shape their chunks."""
    try:
        async for index, event in events:
            if isinstance(event, TokenEvent):
                usage.count(index, event.index + 1)
                if is_end_token(event, lm):
                    continue  # counted, not shown: the finish chunk's usage includes it
                piece = token_chunk(index, event)
                if piece is not None:
                    yield usage.encode(piece)
            elif isinstance(event, FinishEvent):
                usage.count(index, event.completion_tokens)
                add_usage(completion_tokens=event.completion_tokens)
                yield usage.encode(finish_chunk(index, finish_reason(event)))
            elif isinstance(event, ErrorEvent):
                yield StreamError(error=StreamErrorDetail(message=event.message)).model_dump_json()
                yield DONE  # as vLLM: readers that wait for the terminator stop cleanly
                return
        if usage.include:
            yield usage.encode(usage_chunk(usage.total()))
        yield DONE
    finally:
        for handle in handles.values():
            handle.cancel()
        await events.aclose()


async def completion_chunks(
    body: CompletionRequest,
    specs: list[ChoiceSpec],
    handles: dict[int, GenerationHandle],
    events: ChoiceEvents,
    echoed: dict[int, LegacyLogprobs],
    model: str,
    prompt_tokens: int,
    lm: LanguageModel,
) -> AsyncIterator[str]:
    chunk_id, created = new_id("cmpl"), now()
    usage = StreamUsage(body.stream_options, prompt_tokens)

    def chunk(
        index: int, text: str, logprobs: CompletionLogprobs | None, reason: FinishReason | None
    ) -> CompletionChunk:
        return CompletionChunk(
            id=chunk_id,
            created=created,
            model=model,
            choices=[CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=reason)],
            usage=usage.so_far(),
        )

    offsets: dict[int, int] = {}

    def token_chunk(index: int, event: TokenEvent) -> CompletionChunk | None:
        logprobs = None
        if body.logprobs is not None:
            lp = LegacyLogprobs(offset=offsets[index])
            lp.add_event(event)
            offsets[index] = lp.offset
            logprobs = lp.to_schema()
        return chunk(index, event.text, logprobs, None) if event.text or logprobs is not None else None

    try:
        for spec in specs:
            offsets[spec.index] = len(spec.prompt.text) if body.echo else 0
            if body.echo:
                lp = echoed.get(id(spec.prompt))
                yield usage.encode(
                    chunk(spec.index, spec.prompt.text, lp.to_schema() if lp is not None else None, None)
                )
        for spec in specs:
            if spec.params is None:  # max_tokens = 0: the echo was all
                yield usage.encode(chunk(spec.index, "", None, "length"))
        async for piece in stream_choices(
            events,
            handles,
            lm,
            usage,
            token_chunk=token_chunk,
            finish_chunk=lambda index, reason: chunk(index, "", None, reason),
            usage_chunk=lambda total: CompletionChunk(
                id=chunk_id, created=created, model=model, choices=[], usage=total
            ),
        ):
            yield piece
    finally:
        for handle in handles.values():
            handle.cancel()


async def chat_chunks(
    body: ChatCompletionRequest,
    specs: list[ChoiceSpec],
    handles: dict[int, GenerationHandle],
    events: ChoiceEvents,
    model: str,
    prompt: Prompt,
    lm: LanguageModel,
) -> AsyncIterator[str]:
    chunk_id, created = new_id("chatcmpl"), now()
    usage = StreamUsage(body.stream_options, len(prompt.ids))

    def chunk(
        index: int, delta: ChatDelta, logprobs: ChoiceLogprobs | None, reason: FinishReason | None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=chunk_id,
            created=created,
            model=model,
            choices=[ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=reason)],
            usage=usage.so_far(),
        )

    def token_chunk(index: int, event: TokenEvent) -> ChatCompletionChunk | None:
        logprobs = ChoiceLogprobs(content=[event_logprob(event, lm)]) if body.logprobs else None
        return (
            chunk(index, ChatDelta(content=event.text), logprobs, None) if event.text or logprobs is not None else None
        )

    try:
        for spec in specs:
            yield usage.encode(chunk(spec.index, ChatDelta(role="assistant", content=""), None, None))
        async for piece in stream_choices(
            events,
            handles,
            lm,
            usage,
            token_chunk=token_chunk,
            finish_chunk=lambda index, reason: chunk(index, ChatDelta(), None, reason),
            usage_chunk=lambda total: ChatCompletionChunk(
                id=chunk_id, created=created, model=model, choices=[], usage=total
            ),
        ):
            yield piece
    finally:  # a client gone before the first token still frees its batch slots
        for handle in handles.values():
            handle.cancel()
