"""`/v1` streams: the choices' engine events as OpenAI's chunks, one `data:` line each, then `[DONE]`.

The router waits for the first event before it answers (`started_choices`), so a stream whose time
limit passes before its first token is a 504, as the native `/generate` answers it, not a 200 stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from typing import TypeVar

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
from service.openai.tool_calls import ToolCallStream, ToolReader
from service.schemas import Usage
from service.streaming import first_event_checked

ChoiceEvents = AsyncGenerator[tuple[int, EngineEvent], None]
Chunk = CompletionChunk | ChatCompletionChunk
ChoiceT = TypeVar("ChoiceT")  # CompletionChoice or ChatChunkChoice
LogprobsT = TypeVar("LogprobsT")  # CompletionLogprobs or ChoiceLogprobs
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

    def encode(self, chunk: Chunk) -> str:
        return chunk.model_dump_json(exclude=None if self.include else {"usage"})


async def stream_chunks(
    events: ChoiceEvents,
    handles: dict[int, GenerationHandle],
    lm: LanguageModel,
    *,
    options: StreamOptions | None,
    prompt_tokens: int,
    model: str,
    envelope: Callable[..., Chunk],
    id_prefix: str,
    choice: Callable[[int, str | None, LogprobsT | None, FinishReason | None], ChoiceT | None],
    token_logprobs: Callable[[int, TokenEvent], LogprobsT | None],
    opening: Iterable[ChoiceT] = (),
) -> AsyncIterator[str]:
    """Every /v1 stream, whichever endpoint: the `opening` choices (chat's role, completions' echo and the
    choices that `max_tokens: 0` finishes at once), then the choices' events as they come, a chunk per
    shown token and per finish, the usage counted as tokens arrive, the usage-only last chunk when
    `include_usage` asks for it, an error chunk if generation fails, `[DONE]` at the end, and every
    generation cancelled when the stream ends or the client leaves (before the first token too).

    The endpoints give only what their chunks differ in: the chunk model (`envelope`) and its id's prefix,
    how a choice is made from its index, the text it adds (None: none, as in a finish chunk), its logprobs
    and its finish reason (None: nothing to send yet, as a tool call's held text), and a token's logprobs
    (a token with neither text nor logprobs sends nothing).
    Every chunk carries the stream's id, `created` and model, one choice, and the usage so far."""
    chunk_id, created = new_id(id_prefix), now()
    usage = StreamUsage(options, prompt_tokens)

    def chunk(choices: list[ChoiceT], chunk_usage: Usage | None) -> str:
        return usage.encode(envelope(id=chunk_id, created=created, model=model, choices=choices, usage=chunk_usage))

    try:
        for opened in opening:
            yield chunk([opened], usage.so_far())
        async for index, event in events:
            if isinstance(event, TokenEvent):
                usage.count(index, event.index + 1)
                if is_end_token(event, lm):
                    continue  # counted, not shown: the finish chunk's usage includes it
                logprobs = token_logprobs(index, event)
                made = choice(index, event.text, logprobs, None) if event.text or logprobs is not None else None
                if made is not None:
                    yield chunk([made], usage.so_far())
            elif isinstance(event, FinishEvent):
                usage.count(index, event.completion_tokens)
                add_usage(completion_tokens=event.completion_tokens)
                finished = choice(index, None, None, finish_reason(event))
                assert finished is not None  # a finish always makes its chunk
                yield chunk([finished], usage.so_far())
            elif isinstance(event, ErrorEvent):
                yield StreamError(error=StreamErrorDetail(message=event.message)).model_dump_json()
                yield DONE  # as vLLM: readers that wait for the terminator stop cleanly
                return
        if usage.include:
            yield chunk([], usage.total())
        yield DONE
    finally:  # a client gone before the first token still frees its batch slots
        for handle in handles.values():
            handle.cancel()
        await events.aclose()


def completion_chunks(
    body: CompletionRequest,
    specs: list[ChoiceSpec],
    handles: dict[int, GenerationHandle],
    events: ChoiceEvents,
    echoed: dict[int, LegacyLogprobs],
    model: str,
    prompt_tokens: int,
    lm: LanguageModel,
) -> AsyncIterator[str]:
    offsets = {spec.index: len(spec.prompt.text) if body.echo else 0 for spec in specs}

    def choice(
        index: int, text: str | None, logprobs: CompletionLogprobs | None, reason: FinishReason | None
    ) -> CompletionChoice:
        return CompletionChoice(index=index, text=text or "", logprobs=logprobs, finish_reason=reason)

    def token_logprobs(index: int, event: TokenEvent) -> CompletionLogprobs | None:
        if body.logprobs is None:
            return None
        lp = LegacyLogprobs(offset=offsets[index])
        lp.add_event(event)
        offsets[index] = lp.offset
        return lp.to_schema()

    def opening() -> Iterator[CompletionChoice]:
        if body.echo:
            for spec in specs:
                lp = echoed.get(id(spec.prompt))
                yield choice(spec.index, spec.prompt.text, lp.to_schema() if lp is not None else None, None)
        for spec in specs:
            if spec.params is None:  # max_tokens = 0: the echo was all
                yield choice(spec.index, None, None, "length")

    return stream_chunks(
        events,
        handles,
        lm,
        options=body.stream_options,
        prompt_tokens=prompt_tokens,
        model=model,
        envelope=CompletionChunk,
        id_prefix="cmpl",
        choice=choice,
        token_logprobs=token_logprobs,
        opening=opening(),
    )


def chat_chunks(
    body: ChatCompletionRequest,
    specs: list[ChoiceSpec],
    handles: dict[int, GenerationHandle],
    events: ChoiceEvents,
    model: str,
    prompt: Prompt,
    lm: LanguageModel,
    tools: ToolReader | None = None,
) -> AsyncIterator[str]:
    """Chat chunks; with tools, each choice's text goes through its ToolCallStream (tool_calls.py)."""
    calls = {spec.index: ToolCallStream(tools) for spec in specs} if tools is not None else {}

    def choice(
        index: int, text: str | None, logprobs: ChoiceLogprobs | None, reason: FinishReason | None
    ) -> ChatChunkChoice | None:
        delta: ChatDelta | None = ChatDelta(content=text)
        if index in calls and reason is not None:
            delta, reason = calls[index].finish(reason)
        elif index in calls:
            delta = calls[index].add(text or "")
        if delta is None and reason is None and logprobs is None:
            return None
        return ChatChunkChoice(index=index, delta=delta or ChatDelta(), logprobs=logprobs, finish_reason=reason)

    def token_logprobs(_index: int, event: TokenEvent) -> ChoiceLogprobs | None:
        return ChoiceLogprobs(content=[event_logprob(event, lm)]) if body.logprobs else None

    return stream_chunks(
        events,
        handles,
        lm,
        options=body.stream_options,
        prompt_tokens=len(prompt.ids),
        model=model,
        envelope=ChatCompletionChunk,
        id_prefix="chatcmpl",
        choice=choice,
        token_logprobs=token_logprobs,
        opening=(ChatChunkChoice(index=spec.index, delta=ChatDelta(role="assistant", content="")) for spec in specs),
    )
