"""Inspection endpoints: HTTP in, the inspection's pieces on the engine thread in its turn
(scheduling.py), HTTP out. A client that leaves stops its inspection after the piece running then;
the answer (up to a few MB of JSON) is built and encoded off the event loop, so /health stays quick."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from service.config import Settings
from service.deps import InspectionQueueDep, LanguageModelDep, SettingsDep
from service.disconnect import ClientDisconnected, cancel_on_disconnect
from service.inspect.attention import inspect_attention
from service.inspect.limits import InspectionLimits, ModelShape
from service.inspect.logit_lens import inspect_logit_lens
from service.inspect.scheduling import InspectionQueue, Passes
from service.inspect.schemas import (
    AttentionRequest,
    AttentionResponse,
    InspectRequest,
    LogitLensRequest,
    LogitLensResponse,
    TreeRequest,
    TreeResponse,
)
from service.inspect.tree import inspect_tree
from service.language.model import LanguageModel
from service.language.validation import encode_prompt
from service.observability.context import add_usage, note_prompt

router = APIRouter(prefix="/inspect", tags=["inspection"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"description": "Request body too large"},
    422: {"description": "Invalid field or over a limit: the body names the field and the limit"},
    429: {"description": "Queue full: retry after `Retry-After` seconds"},
    501: {"description": "The loaded model lacks what this inspection needs"},
    503: {"description": "Model still loading, or shutting down"},
}


P = TypeVar("P")
R = TypeVar("R")


async def _inspect(
    request: Request,
    queue: InspectionQueue,
    lm: LanguageModel,
    settings: Settings,
    body: InspectRequest,
    params_of: Callable[[InspectionLimits], P],
    run: Callable[[LanguageModel, bool, list[int], P], Passes[R]],
    answer: Callable[[R, str], BaseModel],
) -> Response:
    """Every inspection route's shape: the prompt tokenized and counted, the body checked against the
    limits for that prompt (`params_of`), then `run`'s pieces on the engine thread in this request's
    turn, and `answer`'s JSON."""
    ids = encode_prompt(
        lm, settings, prompt=body.prompt, add_special_tokens=body.add_special_tokens, parse_special=body.parse_special
    )
    note_prompt(body.prompt)
    add_usage(prompt_tokens=len(ids))
    params = params_of(InspectionLimits.of(lm, settings, len(ids)))
    try:
        result = await cancel_on_disconnect(request, queue.run(run(lm, settings.lean_decoder, ids, params)))
    except ClientDisconnected:
        return Response(status_code=499)
    encoded = await asyncio.to_thread(lambda: answer(result, lm.model_id).model_dump_json().encode())
    return Response(encoded, media_type="application/json")


@router.post(
    "/logit-lens",
    response_model=LogitLensResponse,
    responses=_ERRORS,
    summary="The logit lens: each layer's next-token distribution, through the final norm and output layer",
)
async def logit_lens(
    request: Request, body: LogitLensRequest, lm: LanguageModelDep, queue: InspectionQueueDep, settings: SettingsDep
) -> Response:
    layers = ModelShape.of(lm).layers
    return await _inspect(
        request,
        queue,
        lm,
        settings,
        body,
        body.to_lens_params,
        lambda lm, lean, ids, params: inspect_logit_lens(lm, lean, ids, params, layers),
        LogitLensResponse.of,
    )


@router.post(
    "/attention",
    response_model=AttentionResponse,
    responses=_ERRORS,
    summary="Attention weights of chosen layers, heads and query positions over the prompt",
)
async def attention(
    request: Request, body: AttentionRequest, lm: LanguageModelDep, queue: InspectionQueueDep, settings: SettingsDep
) -> Response:
    return await _inspect(
        request, queue, lm, settings, body, body.to_attention_params, inspect_attention, AttentionResponse.of
    )


@router.post(
    "/tree",
    response_model=TreeResponse,
    responses=_ERRORS,
    summary="The tree of likeliest continuations: `branching` tokens at each step, `depth` steps",
)
async def tree(
    request: Request, body: TreeRequest, lm: LanguageModelDep, queue: InspectionQueueDep, settings: SettingsDep
) -> Response:
    return await _inspect(request, queue, lm, settings, body, body.to_tree_params, inspect_tree, TreeResponse.of)
