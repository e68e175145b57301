"""OpenAI-compatible endpoints under `/v1`: models, completions, chat completions (whole or streamed), and
embeddings (`embeddings/`).

Streams are Server-Sent Events in OpenAI's format: `data: {chunk}` per token, a final chunk per
choice with its `finish_reason`, then `data: [DONE]`. Usage only with `stream_options.include_usage`,
as OpenAI sends it: `"usage": null` on every chunk and the usage in a last chunk with empty `choices`
(see `service.openai.streams.StreamUsage`). Errors are OpenAI-shaped with 400 for invalid requests (see `service.errors`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.deps import EngineDep, LanguageModelDep, SettingsDep, app_state
from service.disconnect import ClientDisconnected, cancel_on_disconnect
from service.language.model import LanguageModel
from service.observability.context import add_usage, annotate, note_prompt
from service.openai.embeddings.router import router as embeddings_router
from service.openai.responses import ChatCompletionResponse, CompletionResponse, ModelCard, ModelList
from service.openai.schemas import ChatCompletionRequest, CompletionRequest
from service.openai.serving import (
    LegacyLogprobs,
    chat_prompt,
    chat_response,
    check_model,
    choice_specs,
    collect,
    compiled_grammar,
    completion_prompts,
    completion_response,
    prompt_logprobs,
    submit_all,
)
from service.openai.streams import chat_chunks, completion_chunks, started_choices
from service.openai.tool_calls import tool_reader
from service.security import ApiKey
from service.streaming import event_stream_response

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[ApiKey])
router.include_router(embeddings_router)  # POST /v1/embeddings

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid or unsupported field: `error.param` names it"},
    401: {"description": "Missing or wrong API key (when GENAI_API_KEYS is set)"},
    404: {"description": "Unknown model"},
    413: {"description": "Request body too large"},
    429: {"description": "Queue full: retry after `Retry-After` seconds"},
    503: {"description": "Model still loading, or shutting down"},
}
_ERRORS_GENERATING: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    500: {"description": "The generation failed before its first token"},
    504: {"description": "The request's time limit passed before its first token (streamed or not)"},
}


def _stream_doc(chunk_object: str) -> dict[str, Any]:
    """The stream's description (its chunks are `streams.py`'s models; an SSE response has no JSON schema here)."""
    return {
        "description": f"With `stream: true`: `text/event-stream` of `data: {{...}}` lines, each a `{chunk_object}` object "
        "(as OpenAI's), ending with `data: [DONE]`.",
        "content": {"text/event-stream": {}},
    }


def _card(lm: LanguageModel, request: Request) -> ModelCard:
    return ModelCard(id=lm.model_id, created=int(app_state(request).started_at), max_model_len=lm.context_length)


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
    responses={**_ERRORS_GENERATING, 200: _stream_doc("text_completion")},
    summary="Complete a prompt (OpenAI legacy completions): logprobs, echo, stream",
)
async def completions(
    body: CompletionRequest, request: Request, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep
) -> Response | CompletionResponse:
    model = check_model(body.model, lm)
    prompts = completion_prompts(body, lm, settings)
    specs = choice_specs(body, prompts, lm, settings)
    prompt_tokens = sum(len(p.ids) for p in prompts)
    note_prompt(prompts[0].text if len(prompts) == 1 else "\n---\n".join(p.text for p in prompts))
    annotate(model=model, choices=len(specs))
    add_usage(prompt_tokens=prompt_tokens)

    echoed: dict[int, LegacyLogprobs] = {}
    if body.echo and body.logprobs is not None:
        for prompt in prompts:
            echoed[id(prompt)] = await prompt_logprobs(engine, lm, prompt, body.logprobs)

    handles = submit_all(engine, specs, await compiled_grammar(engine, specs))
    try:
        if body.stream:
            events = await started_choices(request, handles)
            return event_stream_response(
                completion_chunks(body, specs, handles, events, echoed, model, prompt_tokens, lm), settings
            )
        results = await cancel_on_disconnect(request, collect(specs, handles))
    except ClientDisconnected:
        return Response(status_code=499)
    return completion_response(body, results, echoed, model, prompt_tokens, lm)


# ---- /v1/chat/completions -----------------------------------------------------------------------


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**_ERRORS_GENERATING, 200: _stream_doc("chat.completion.chunk")},
    summary="Chat through the model's chat template: logprobs, stream, structured output, tool calls",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep
) -> Response | ChatCompletionResponse:
    model = check_model(body.model, lm)
    prompt = chat_prompt(body, lm, settings)
    specs = choice_specs(body, [prompt], lm, settings)
    note_prompt(prompt.text)
    annotate(model=model, choices=len(specs))
    add_usage(prompt_tokens=len(prompt.ids))

    tools = await tool_reader(engine, lm, body.tool_use())
    handles = submit_all(engine, specs, await compiled_grammar(engine, specs))
    try:
        if body.stream:
            events = await started_choices(request, handles)
            return event_stream_response(chat_chunks(body, specs, handles, events, model, prompt, lm, tools), settings)
        results = await cancel_on_disconnect(request, collect(specs, handles))
    except ClientDisconnected:
        return Response(status_code=499)
    return chat_response(body, results, model, len(prompt.ids), lm, tools)
