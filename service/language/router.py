"""Language endpoints: HTTP in, calls to the model layer and engine, HTTP out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from sse_starlette import ServerSentEvent

from service.deps import EngineDep, LanguageModelDep, SettingsDep
from service.disconnect import ClientDisconnected, cancel_on_disconnect
from service.errors import GenerationError, InvalidInput
from service.language.events import (
    Candidate,
    ErrorEvent,
    FinishEvent,
    GenerationFailed,
    StageSummary,
    TokenEvent,
    TokenExplanation,
)
from service.language.explain_schemas import SamplerDraw, SamplerStage, StepExplanation, TokenCandidate
from service.language.model import LanguageModel
from service.language.schemas import (
    GenerateRequest,
    GenerateResponse,
    NextTokenRequest,
    NextTokenResponse,
    StepDetail,
    Timing,
)
from service.language.tokenize_schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeExplanation,
    TokenizeRequest,
    TokenizeResponse,
)
from service.language.validation import (
    SamplingLimits,
    check_text_length,
    check_token_ids,
    encode_messages,
    encode_prompt,
)
from service.observability.context import add_usage, note_prompt
from service.schemas import Usage
from service.streaming import event_stream_response, first_event_checked, raise_if_failed_before_first_token

router = APIRouter(tags=["language"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"description": "Request body too large"},
    422: {"description": "Invalid field: the body names it and the limit"},
    429: {"description": "Queue full: retry after `Retry-After` seconds"},
    503: {"description": "Model still loading, or shutting down"},
}


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    summary="Split text into the model's tokens; optionally show how, merge by merge",
)
async def tokenize(body: TokenizeRequest, lm: LanguageModelDep, settings: SettingsDep) -> TokenizeResponse:
    check_text_length(body.text, settings, "text")
    result = lm.tokenize(body.text, add_special_tokens=body.add_special_tokens, parse_special=body.parse_special)
    # The replay is pure Python (~15 ms for 2,000 characters), so it runs in a worker thread, not on the
    # event loop; nor on the engine's thread, as it does not use the model.
    explanation = await asyncio.to_thread(_explain, lm, body, result.ids) if body.explain else None
    return TokenizeResponse(
        ids=result.ids,
        tokens=result.tokens,
        offsets=result.offsets,
        count=len(result.ids),
        model=lm.model_id,
        explain=explanation,
    )


def _explain(lm: LanguageModel, body: TokenizeRequest, ids: list[int]) -> TokenizeExplanation:
    explainer = lm.bpe_explainer()
    explanation = explainer.explain(
        body.text, parse_special=body.parse_special, add_special_tokens=body.add_special_tokens, expected_ids=ids
    )
    return TokenizeExplanation.of(explanation, byte_level=explainer.byte_level)


@router.post(
    "/detokenize", response_model=DetokenizeResponse, responses=_ERRORS, summary="Turn token ids back into text"
)
async def detokenize(body: DetokenizeRequest, lm: LanguageModelDep, settings: SettingsDep) -> DetokenizeResponse:
    if len(body.ids) > settings.max_text_chars:
        raise InvalidInput(f"at most {settings.max_text_chars} ids per request", param="ids")
    check_token_ids(lm, body.ids)
    return DetokenizeResponse(
        text=lm.detokenize(body.ids, skip_special_tokens=body.skip_special_tokens), model=lm.model_id
    )


def _candidate(c: Candidate) -> TokenCandidate:
    return TokenCandidate(id=c.id, token=c.token, probability=c.probability, logprob=c.logprob)


def _stage(stage: StageSummary) -> SamplerStage:
    return SamplerStage(
        name=stage.name, kept=stage.kept, removed_mass=stage.removed_mass, top=[_candidate(c) for c in stage.top]
    )


def _explanation(e: TokenExplanation) -> StepExplanation:
    return StepExplanation(
        entropy=e.entropy,
        surprisal=e.surprisal,
        margin=e.margin,
        stages=[_stage(s) for s in e.stages],
        draw=SamplerDraw(greedy=e.draw.greedy, u=e.draw.u, rank=e.draw.rank),
    )


@router.post(
    "/next-token-probs",
    response_model=NextTokenResponse,
    responses=_ERRORS,
    summary="The model's probability distribution over the next token, top-k",
)
async def next_token_probs(
    body: NextTokenRequest, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep
) -> NextTokenResponse:
    params = body.to_distribution_params(SamplingLimits.of(lm, settings))
    ids = encode_prompt(
        lm, settings, prompt=body.prompt, add_special_tokens=body.add_special_tokens, parse_special=body.parse_special
    )
    note_prompt(body.prompt)
    add_usage(prompt_tokens=len(ids))
    distribution = await engine.next_token_distribution(ids, params.top_k, params.temperature, params.sampler())
    return NextTokenResponse(
        candidates=[_candidate(c) for c in distribution.candidates],
        prompt_tokens=distribution.prompt_tokens,
        temperature=params.temperature,
        model=lm.model_id,
        stages=[_stage(s) for s in distribution.stages] if distribution.stages is not None else None,
    )


def _step(event: TokenEvent) -> StepDetail:
    return StepDetail(
        index=event.index,
        id=event.id,
        token=event.token,
        probability=event.probability,
        logprob=event.logprob,
        alternatives=[_candidate(c) for c in event.alternatives] if event.alternatives is not None else None,
        explain=_explanation(event.explain) if event.explain is not None else None,
    )


def _usage(finish: FinishEvent) -> Usage:
    return Usage.of(finish.prompt_tokens, finish.completion_tokens)


def _timing(finish: FinishEvent) -> Timing:
    return Timing(
        queue_seconds=round(finish.queue_seconds, 6),
        time_to_first_token_seconds=round(finish.time_to_first_token_seconds, 6)
        if finish.time_to_first_token_seconds is not None
        else None,
        total_seconds=round(finish.total_seconds, 6),
        tokens_per_second=round(finish.tokens_per_second, 3) if finish.tokens_per_second is not None else None,
    )


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={
        **_ERRORS,
        200: {
            "description": "The generation; with `stream: true`, `text/event-stream` events `token` (one per token), then `done` (or `error`).",
            "content": {"text/event-stream": {}},
        },
    },
    summary="Generate text, greedy or sampled; optionally streamed token by token",
)
async def generate(
    body: GenerateRequest, request: Request, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep
) -> Response | GenerateResponse:
    if body.messages is not None:
        _, ids = encode_messages(lm, settings, [m.model_dump() for m in body.messages])
    else:
        ids = encode_prompt(
            lm,
            settings,
            prompt=body.prompt or "",
            add_special_tokens=body.add_special_tokens,
            parse_special=body.parse_special,
        )
    params = body.to_sampling_params(SamplingLimits.of(lm, settings, prompt_tokens=len(ids)))
    note_prompt(
        body.prompt if body.prompt is not None else "\n".join(f"{m.role}: {m.content}" for m in body.messages or [])
    )
    add_usage(prompt_tokens=len(ids))
    grammar = await engine.grammars.compile(params.constraint) if params.constraint is not None else None
    handle = engine.submit(ids, params, grammar)
    if body.stream:
        try:
            events = await first_event_checked(request, handle.events(), handle.cancel)
        except ClientDisconnected:
            return Response(status_code=499)
        return event_stream_response(
            _stream_events(events, handle.cancel, params.top_alternatives > 0, lm.model_id), settings
        )
    try:
        tokens, finish = await cancel_on_disconnect(request, handle.result())
    except ClientDisconnected:
        return Response(status_code=499)
    except GenerationFailed as exc:
        raise GenerationError(str(exc)) from exc
    raise_if_failed_before_first_token(finish)
    add_usage(completion_tokens=finish.completion_tokens)
    return GenerateResponse(
        text=finish.text,
        ids=finish.ids,
        finish_reason=finish.finish_reason,
        usage=_usage(finish),
        timing=_timing(finish),
        steps=[_step(t) for t in tokens] if params.top_alternatives > 0 or params.explain else None,
        model=lm.model_id,
        perplexity=finish.perplexity,
    )


async def _stream_events(
    events: AsyncIterator[Any], cancel: Callable[[], None], with_alternatives: bool, model_id: str
) -> AsyncIterator[ServerSentEvent]:
    """SSE events: `token` per generated token, then `done` with usage and timing, or `error`."""
    try:
        async for event in events:
            if isinstance(event, TokenEvent):
                data: dict[str, Any] = {
                    "index": event.index,
                    "id": event.id,
                    "token": event.token,
                    "text": event.text,
                    "probability": event.probability,
                    "logprob": event.logprob,
                    "special": event.special,
                }
                if with_alternatives and event.alternatives is not None:
                    data["alternatives"] = [_candidate(c).model_dump() for c in event.alternatives]
                if event.explain is not None:
                    data["explain"] = _explanation(event.explain).model_dump()
                yield ServerSentEvent(data=json.dumps(data), event="token")
            elif isinstance(event, FinishEvent):
                add_usage(completion_tokens=event.completion_tokens)
                done: dict[str, Any] = {
                    "text": event.text,
                    "ids": event.ids,
                    "finish_reason": event.finish_reason,
                    "usage": _usage(event).model_dump(),
                    "timing": _timing(event).model_dump(),
                    "model": model_id,
                }
                if event.perplexity is not None:
                    done["perplexity"] = event.perplexity
                yield ServerSentEvent(data=json.dumps(done), event="done")
            elif isinstance(event, ErrorEvent):
                yield ServerSentEvent(
                    data=json.dumps({"error": {"message": event.message, "type": "generation_error"}}), event="error"
                )
    finally:
        cancel()  # a no-op when finished; frees the batch slot when the client went away
