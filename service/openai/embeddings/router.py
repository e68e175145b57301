"""`POST /v1/embeddings`: validate and tokenize on the event loop, embed on the engine thread, answer OpenAI's list.

Included by `service/openai/router.py`, so it shares `/v1`'s prefix, API keys and 400s naming the field."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.deps import EngineDep, LanguageModelDep, SettingsDep
from service.disconnect import ClientDisconnected, cancel_on_disconnect
from service.errors import GenerationError
from service.language.events import GenerationFailed
from service.observability.context import add_usage, annotate
from service.openai.embeddings.schemas import EmbeddingRequest, EmbeddingResponse
from service.openai.serving import check_model

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid or unsupported field: `error.param` names it (`input[i]` for one of several inputs)"},
    401: {"description": "Missing or wrong API key (when GENAI_API_KEYS is set)"},
    404: {"description": "Unknown model"},
    413: {"description": "Request body too large"},
    429: {"description": "Queue full: retry after `Retry-After` seconds"},
    500: {"description": "The forward pass failed"},
    503: {"description": "Model still loading, or shutting down"},
}


@router.post(
    "/embeddings",
    response_model=EmbeddingResponse,
    responses=_ERRORS,
    summary="Embed texts or token ids: the last layer's states, pooled (GENAI_EMBEDDING_POOLING) and L2-normalised",
)
async def embeddings(
    body: EmbeddingRequest, request: Request, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep
) -> Response | EmbeddingResponse:
    model = check_model(body.model, lm)
    inputs = body.token_inputs(lm, settings)
    tokens = sum(len(ids) for ids in inputs)
    annotate(model=model, inputs=len(inputs))
    add_usage(prompt_tokens=tokens)
    try:
        vectors = await cancel_on_disconnect(request, engine.embed(inputs))
    except ClientDisconnected:
        return Response(status_code=499)
    except GenerationFailed as exc:
        raise GenerationError(str(exc)) from exc
    return EmbeddingResponse.of(vectors, body.encoding_format, model, tokens)
