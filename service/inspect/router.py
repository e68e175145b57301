"""Inspection endpoints: HTTP in, one call on the engine thread, HTTP out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter

from service.config import Settings
from service.deps import EngineDep, LanguageModelDep, SettingsDep
from service.inspect.attention import inspect_attention
from service.inspect.limits import InspectionLimits, ModelShape
from service.inspect.logit_lens import inspect_logit_lens
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
from service.language.engine import GenerationEngine
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
    engine: GenerationEngine,
    lm: LanguageModel,
    settings: Settings,
    body: InspectRequest,
    params_of: Callable[[InspectionLimits], P],
    run: Callable[[LanguageModel, bool, list[int], P], R],
) -> R:
    """Every inspection route's shape: the prompt tokenized and counted, the body checked against the
    limits for that prompt (`params_of`), then `run` on the engine thread with the parameters."""
    ids = encode_prompt(
        lm, settings, prompt=body.prompt, add_special_tokens=body.add_special_tokens, parse_special=body.parse_special
    )
    note_prompt(body.prompt)
    add_usage(prompt_tokens=len(ids))
    params = params_of(InspectionLimits.of(lm, settings, len(ids)))
    return await engine.run_on_engine_thread(run, lm, settings.lean_decoder, ids, params)


@router.post(
    "/logit-lens",
    response_model=LogitLensResponse,
    responses=_ERRORS,
    summary="The logit lens: each layer's next-token distribution, through the final norm and output layer",
)
async def logit_lens(
    body: LogitLensRequest, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep
) -> LogitLensResponse:
    layers = ModelShape.of(lm).layers
    lens = await _inspect(
        engine,
        lm,
        settings,
        body,
        body.to_lens_params,
        lambda lm, lean, ids, params: inspect_logit_lens(lm, lean, ids, params, layers),
    )
    return LogitLensResponse.of(lens, lm.model_id)


@router.post(
    "/attention",
    response_model=AttentionResponse,
    responses=_ERRORS,
    summary="Attention weights of chosen layers, heads and query positions over the prompt",
)
async def attention(
    body: AttentionRequest, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep
) -> AttentionResponse:
    weights = await _inspect(engine, lm, settings, body, body.to_attention_params, inspect_attention)
    return AttentionResponse.of(weights, lm.model_id)


@router.post(
    "/tree",
    response_model=TreeResponse,
    responses=_ERRORS,
    summary="The tree of likeliest continuations: `branching` tokens at each step, `depth` steps",
)
async def tree(body: TreeRequest, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep) -> TreeResponse:
    continuations = await _inspect(engine, lm, settings, body, body.to_tree_params, inspect_tree)
    return TreeResponse.of(continuations, lm.model_id)
