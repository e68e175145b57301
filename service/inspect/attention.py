"""Attention weights: for each requested layer and head, how much each query position attends to every
token up to and including itself (rows sum to 1; no position sees a later one). Softmax weights as the
model computes them, from an explicit softmax (the lean decoder's `trace`, or transformers' eager
attention), so they equal transformers' `output_attentions=True` with `attn_implementation="eager"`."""

from __future__ import annotations

from dataclasses import dataclass

from service.inspect.forward import ModelInspector, inspector_for
from service.inspect.limits import AttentionParams
from service.inspect.scheduling import Passes, run_to_end
from service.language import token_choice
from service.language.model import LanguageModel


@dataclass(frozen=True)
class AttentionMap:
    layer: int
    head: int | None  # None: the mean over the requested heads
    weights: list[list[float]]  # one row per query position q: its weights over tokens 0..q


@dataclass(frozen=True)
class AttentionWeights:
    ids: list[int]
    tokens: list[str]
    query_positions: list[int]
    heads: list[int]
    mean_over_heads: bool
    maps: list[AttentionMap]
    forward: str


def attention_passes(
    inspector: ModelInspector, ids: list[int], params: AttentionParams, token_text: token_choice.TokenText
) -> Passes[AttentionWeights]:
    """Two pieces (scheduling.py): the forward pass with its weights, then the maps cut from them."""
    by_layer = inspector.attention(ids, params.layers)  # layer -> [heads, S, S]
    yield
    heads = list(params.heads)
    maps = []
    for layer in params.layers:
        weights = by_layer[layer][heads]  # [len(heads), S, S]
        if params.mean_over_heads:
            weights = weights.mean(dim=0, keepdim=True)
        for row, head in enumerate([None] if params.mean_over_heads else heads):
            rows = [weights[row, q, : q + 1].tolist() for q in params.query_positions]
            maps.append(AttentionMap(layer=layer, head=head, weights=rows))
    return AttentionWeights(
        ids=ids,
        tokens=[token_text(i) for i in ids],
        query_positions=list(params.query_positions),
        heads=heads,
        mean_over_heads=params.mean_over_heads,
        maps=maps,
        forward=inspector.kind,
    )


def attention_weights(
    inspector: ModelInspector, ids: list[int], params: AttentionParams, token_text: token_choice.TokenText
) -> AttentionWeights:
    """The weights of `params`, every piece at once on the calling thread."""
    return run_to_end(attention_passes(inspector, ids, params, token_text))


def inspect_attention(
    lm: LanguageModel, lean: bool, ids: list[int], params: AttentionParams
) -> Passes[AttentionWeights]:
    """`attention_passes` by the forward the engine serves `lm` with; each piece for the engine thread (the
    inspector is chosen in the first)."""
    return (yield from attention_passes(inspector_for(lm, lean), ids, params, lm.token_text))
