"""OpenAI-compatible endpoints under `/v1`: models, completions, chat completions (whole or streamed).

Streams are Server-Sent Events in OpenAI's format: `data: {chunk}` per token, a final chunk per
choice with its `finish_reason`, then `data: [DONE]`. Usage only with `stream_options.include_usage`,
as OpenAI sends it: `"usage": null` on every chunk and the usage in a last chunk with empty `choices`
(see `service.openai.serving.StreamUsage`). Errors are OpenAI-shaped with 400 for invalid requests (see `service.errors`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from service.deps import EngineDep, LanguageModelDep, SettingsDep
from service.disconnect import ClientDisconnected, cancel_on_disconnect
from service.language.events import GenerationHandle, TokenEvent
from service.language.model import LanguageModel
from service.observability.context import add_usage, annotate, note_prompt
from service.openai.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from service.openai.serving import (
    ChoiceResult,
    ChoiceSpec,
    LegacyLogprobs,
    Prompt,
    chat_prompt,
    chat_token_logprob,
    check_model,
    collect,
    completion_prompts,
    engine_params,
    finish_reason,
    is_end_token,
    new_id,
    now,
    prompt_logprobs,
    seeded,
    sse_data,
    StreamUsage,
    stream_choices,
    submit_all,
    usage_dict,
)
from service.security import ApiKey
from service.streaming import event_stream_response

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[ApiKey])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid or unsupported field: `error.param` names it"},
    401: {"description": "Missing or wrong API key (when GENAI_API_KEYS is set)"},
    404: {"description": "Unknown model"},
    413: {"description": "Request body too large"},
    429: {"description": "Queue full: retry after `Retry-After` seconds"},
    503: {"description": "Model still loading, or shutting down"},
}
_STREAM_DOC = {"description": "With `stream: true`: `text/event-stream` of `data: {chunk}` lines, ending with `data: [DONE]`.", "content": {"text/event-stream": {}}}
_COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def _card(lm: LanguageModel, request: Request) -> ModelCard:
    return ModelCard(id=lm.model_id, created=int(request.app.state.started_at), max_model_len=lm.context_length)


@router.get("/models", response_model=ModelList, responses=_ERRORS, summary="The served language model, OpenAI-style")
async def list_models(request: Request, lm: LanguageModelDep) -> ModelList:
    return ModelList(data=[_card(lm, request)])


@router.get("/models/{model_id:path}", response_model=ModelCard, responses=_ERRORS, summary="One model, OpenAI-style")
async def retrieve_model(model_id: str, request: Request, lm: LanguageModelDep) -> ModelCard:
    check_model(model_id, lm)
    return _card(lm, request)


# ---- /v1/completions ----------------------------------------------------------------------------


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses={**_ERRORS, 200: _STREAM_DOC},
    summary="Complete a prompt (OpenAI legacy completions): logprobs, echo, stream",
)
async def completions(
    body: CompletionRequest, request: Request, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep
) -> Response | CompletionResponse:
    model = check_model(body.model, lm)
    prompts = completion_prompts(body, lm, settings)
    want_logprobs = body.logprobs is not None
    top_n = body.logprobs or 0
    specs: list[ChoiceSpec] = []
    for p_index, prompt in enumerate(prompts):
        params = None
        if body.max_tokens != 0:
            params = engine_params(
                body, len(prompt.ids), body.max_tokens, _COMPLETIONS_DEFAULT_MAX_TOKENS, top_n, lm, settings, logprobs_param="logprobs"
            )
        for j in range(body.n):
            specs.append(ChoiceSpec(index=p_index * body.n + j, prompt=prompt, params=seeded(params, j) if params else None))
    prompt_tokens = sum(len(p.ids) for p in prompts)
    note_prompt(prompts[0].text if len(prompts) == 1 else "\n---\n".join(p.text for p in prompts))
    annotate(model=model, choices=len(specs))
    add_usage(prompt_tokens=prompt_tokens)

    echoed: dict[int, LegacyLogprobs] = {}
    if body.echo and want_logprobs:
        for prompt in prompts:
            echoed[id(prompt)] = await prompt_logprobs(engine, lm, prompt, top_n)

    handles = submit_all(engine, specs)
    if body.stream:
        return event_stream_response(_completion_chunks(body, specs, handles, echoed, model, prompt_tokens, lm), settings)
    try:
        results = await cancel_on_disconnect(request, collect(specs, handles))
    except ClientDisconnected:
        return Response(status_code=499)
    return CompletionResponse(
        id=new_id("cmpl"),
        created=now(),
        model=model,
        choices=[_completion_choice(body, r, echoed, lm) for r in results],
        usage=usage_dict(prompt_tokens, sum(r.finish.completion_tokens for r in results if r.finish)),  # type: ignore[arg-type]
    )


def _completion_choice(body: CompletionRequest, result: ChoiceResult, echoed: dict[int, LegacyLogprobs], lm: LanguageModel) -> dict[str, Any]:
    prompt = result.spec.prompt
    text = result.finish.text if result.finish else ""
    logprobs = None
    if body.logprobs is not None:
        lp = _copy_logprobs(echoed.get(id(prompt)))
        for event in result.tokens:
            if not is_end_token(event, lm):
                lp.add_event(event)
        logprobs = lp.as_dict()
    return {
        "index": result.spec.index,
        "text": (prompt.text if body.echo else "") + text,
        "logprobs": logprobs,
        "finish_reason": finish_reason(result.finish),
    }


def _copy_logprobs(source: LegacyLogprobs | None) -> LegacyLogprobs:
    if source is None:
        return LegacyLogprobs()
    return LegacyLogprobs(
        tokens=list(source.tokens),
        token_logprobs=list(source.token_logprobs),
        top_logprobs=list(source.top_logprobs),
        text_offset=list(source.text_offset),
        offset=source.offset,
    )


async def _completion_chunks(
    body: CompletionRequest,
    specs: list[ChoiceSpec],
    handles: dict[int, GenerationHandle],
    echoed: dict[int, LegacyLogprobs],
    model: str,
    prompt_tokens: int,
    lm: LanguageModel,
) -> AsyncIterator[str]:
    chunk_id, created = new_id("cmpl"), now()
    usage = StreamUsage(body.stream_options, prompt_tokens)

    def chunk(index: int, text: str, logprobs: dict[str, Any] | None, reason: str | None) -> str:
        return sse_data(
            {
                "id": chunk_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}],
                **usage.fields(),
            }
        )

    offsets: dict[int, int] = {}

    def token_chunk(index: int, event: TokenEvent) -> str | None:
        logprobs = None
        if body.logprobs is not None:
            lp = LegacyLogprobs(offset=offsets[index])
            lp.add_event(event)
            offsets[index] = lp.offset
            logprobs = lp.as_dict()
        return chunk(index, event.text, logprobs, None) if event.text or logprobs is not None else None

    try:
        for spec in specs:
            offsets[spec.index] = len(spec.prompt.text) if body.echo else 0
            if body.echo:
                lp = echoed.get(id(spec.prompt))
                yield chunk(spec.index, spec.prompt.text, lp.as_dict() if lp is not None else None, None)
        echo_only = [spec for spec in specs if spec.params is None]  # max_tokens = 0: the echo was all
        for spec in echo_only:
            yield chunk(spec.index, "", None, "length")
        async for piece in stream_choices(
            handles, lm, usage,
            token_chunk=token_chunk,
            finish_chunk=lambda index, reason: chunk(index, "", None, reason),
            usage_chunk=lambda total: sse_data(
                {"id": chunk_id, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None, "choices": [], "usage": total}
            ),
        ):
            yield piece
    finally:
        for handle in handles.values():
            handle.cancel()


# ---- /v1/chat/completions -----------------------------------------------------------------------


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**_ERRORS, 200: _STREAM_DOC},
    summary="Chat through the model's chat template: logprobs, stream",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep
) -> Response | ChatCompletionResponse:
    model = check_model(body.model, lm)
    prompt = chat_prompt(body, lm, settings)
    top_n = (body.top_logprobs or 0) if body.logprobs else 0
    params = engine_params(
        body, len(prompt.ids), body.requested_max_tokens, settings.default_max_new_tokens, top_n, lm, settings, logprobs_param="top_logprobs"
    )
    specs = [ChoiceSpec(index=j, prompt=prompt, params=seeded(params, j)) for j in range(body.n)]
    note_prompt(prompt.text)
    annotate(model=model, choices=len(specs))
    add_usage(prompt_tokens=len(prompt.ids))

    handles = submit_all(engine, specs)
    if body.stream:
        return event_stream_response(_chat_chunks(body, specs, handles, model, prompt, lm), settings)
    try:
        results = await cancel_on_disconnect(request, collect(specs, handles))
    except ClientDisconnected:
        return Response(status_code=499)
    return ChatCompletionResponse(
        id=new_id("chatcmpl"),
        created=now(),
        model=model,
        choices=[_chat_choice(body, r, lm) for r in results],  # type: ignore[misc]
        usage=usage_dict(len(prompt.ids), sum(r.finish.completion_tokens for r in results if r.finish)),  # type: ignore[arg-type]
    )


def _chat_logprob(event: TokenEvent, lm: LanguageModel) -> dict[str, Any]:
    return chat_token_logprob(lm, event.id, event.token, event.logprob, event.alternatives)


def _chat_choice(body: ChatCompletionRequest, result: ChoiceResult, lm: LanguageModel) -> dict[str, Any]:
    logprobs = None
    if body.logprobs:
        logprobs = {"content": [_chat_logprob(e, lm) for e in result.tokens if not is_end_token(e, lm)], "refusal": None}
    return {
        "index": result.spec.index,
        "message": {"role": "assistant", "content": result.finish.text if result.finish else "", "refusal": None},
        "logprobs": logprobs,
        "finish_reason": finish_reason(result.finish),
    }


async def _chat_chunks(
    body: ChatCompletionRequest,
    specs: list[ChoiceSpec],
    handles: dict[int, GenerationHandle],
    model: str,
    prompt: Prompt,
    lm: LanguageModel,
) -> AsyncIterator[str]:
    chunk_id, created = new_id("chatcmpl"), now()
    usage = StreamUsage(body.stream_options, len(prompt.ids))

    def chunk(index: int, delta: dict[str, Any], logprobs: dict[str, Any] | None, reason: str | None) -> str:
        return sse_data(
            {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}],
                **usage.fields(),
            }
        )

    def token_chunk(index: int, event: TokenEvent) -> str | None:
        logprobs = {"content": [_chat_logprob(event, lm)], "refusal": None} if body.logprobs else None
        return chunk(index, {"content": event.text}, logprobs, None) if event.text or logprobs is not None else None

    try:
        for spec in specs:
            yield chunk(spec.index, {"role": "assistant", "content": ""}, None, None)
        async for piece in stream_choices(
            handles, lm, usage,
            token_chunk=token_chunk,
            finish_chunk=lambda index, reason: chunk(index, {}, None, reason),
            usage_chunk=lambda total: sse_data(
                {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": None, "choices": [], "usage": total}
            ),
        ):
            yield piece
    finally:  # a client gone before the first token still frees its batch slots
        for handle in handles.values():
            handle.cancel()
