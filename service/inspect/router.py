"""Inspection endpoints: HTTP in, one call on the engine thread, HTTP out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.config import Settings
from service.deps import EngineDep, LanguageModelDep, SettingsDep
from service.inspect.attention import inspect_attention
from service.inspect.limits import InspectionLimits
from service.inspect.logit_lens import inspect_logit_lens
from service.inspect.schemas import (
    AttentionRequest,
    AttentionResponse,
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


def _prompt_ids(
    lm: LanguageModel, settings: Settings, prompt: str, add_special_tokens: bool, parse_special: bool
) -> list[int]:
    ids = encode_prompt(lm, settings, prompt=prompt, add_special_tokens=add_special_tokens, parse_special=parse_special)
    note_prompt(prompt)
    add_usage(prompt_tokens=len(ids))
    return ids


@router.post(
    "/logit-lens",
    response_model=LogitLensResponse,
    responses=_ERRORS,
    summary="The logit lens: each layer's next-token distribution, through the final norm and output layer",
)
async def logit_lens(
    body: LogitLensRequest, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep
) -> LogitLensResponse:
    ids = _prompt_ids(lm, settings, body.prompt, body.add_special_tokens, body.parse_special)
    limits = InspectionLimits.of(lm, settings, len(ids))
    params = body.to_lens_params(limits)
    lens = await engine.run_on_engine_thread(
        inspect_logit_lens, lm, settings.lean_decoder, ids, params, limits.shape.layers
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
    ids = _prompt_ids(lm, settings, body.prompt, body.add_special_tokens, body.parse_special)
    params = body.to_attention_params(InspectionLimits.of(lm, settings, len(ids)))
    weights = await engine.run_on_engine_thread(inspect_attention, lm, settings.lean_decoder, ids, params)
    return AttentionResponse.of(weights, lm.model_id)


@router.post(
    "/tree",
    response_model=TreeResponse,
    responses=_ERRORS,
    summary="The tree of likeliest continuations: `branching` tokens at each step, `depth` steps",
)
async def tree(body: TreeRequest, lm: LanguageModelDep, engine: EngineDep, settings: SettingsDep) -> TreeResponse:
    ids = _prompt_ids(lm, settings, body.prompt, body.add_special_tokens, body.parse_special)
    params = body.to_tree_params(InspectionLimits.of(lm, settings, len(ids)))
    continuations = await engine.run_on_engine_thread(inspect_tree, lm, settings.lean_decoder, ids, params)
    return TreeResponse.of(continuations, lm.model_id)
