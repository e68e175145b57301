"""The logit lens: each layer's residual stream read through the model's final norm and output layer,
as if the model stopped there, to see at which layer the next token takes shape.

Per requested position and lens layer (0 = the embeddings, l = after the l-th decoder layer, L = the
model's own output), the distribution's top tokens, its entropy in nats, and the rank there of the
token the whole model ranks first (1 = the top). The last layer is the model's next-token
distribution: `/next-token-probs` gives the same for the last position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from service.inspect.forward import ModelInspector, inspector_for
from service.inspect.limits import LensParams
from service.inspect.scheduling import Passes, run_to_end
from service.language import token_choice
from service.language.events import Candidate
from service.language.model import LanguageModel


@dataclass(frozen=True)
class LensLayer:
    layer: int
    top: list[Candidate]
    entropy: float  # nats
    final_token_rank: int  # 1 = this layer ranks the model's own top token first


@dataclass(frozen=True)
class LensPosition:
    position: int
    token: str  # the prompt's token at this position (the distributions are over the one after it)
    final_token: Candidate  # the model's own top next token here, and its probability
    layers: list[LensLayer]


@dataclass(frozen=True)
class LogitLens:
    ids: list[int]
    tokens: list[str]
    layers: int  # the model's decoder layers (lens layers run 0..layers)
    positions: list[LensPosition]
    forward: str


def lens_layers(
    logits: torch.Tensor, layers: Sequence[int], top_k: int, token_text: token_choice.TokenText
) -> tuple[Candidate, list[LensLayer]]:
    """From logits [len(layers), vocab] whose last row is the model's own output: its top token, and per layer
    the top `top_k`, the entropy and that token's rank."""
    logprobs = torch.log_softmax(logits, dim=-1)  # [layers, vocab]
    entropy = torch.special.entr(logprobs.exp()).sum(dim=-1)  # [layers]: -Σ p ln p, with 0 ln 0 = 0
    final = token_choice.top_candidates(logprobs[-1], 1, token_text)[0]
    ranks = (logprobs > logprobs[:, final.id : final.id + 1]).sum(dim=-1) + 1  # [layers]
    cells = [
        LensLayer(
            layer=layer,
            top=token_choice.top_candidates(logprobs[row], top_k, token_text),
            entropy=float(entropy[row]),
            final_token_rank=int(ranks[row]),
        )
        for row, layer in enumerate(layers)
    ]
    return final, cells


def logit_lens_passes(
    inspector: ModelInspector, ids: list[int], params: LensParams, layer_count: int, token_text: token_choice.TokenText
) -> Passes[LogitLens]:
    """The lens at every requested position, a piece each (scheduling.py; the first also runs the forward
    pass). The model's last layer is computed even when not asked for (it names the token whose rank each
    layer reports) and then left out."""
    asked = list(params.layers)
    run = asked if asked and asked[-1] == layer_count else [*asked, layer_count]
    positions = []
    lens = zip(params.positions, inspector.lens(ids, params.positions, run), strict=True)
    for place, (position, logits) in enumerate(lens):
        final, cells = lens_layers(logits, run, params.top_k, token_text)
        positions.append(
            LensPosition(
                position=position, token=token_text(ids[position]), final_token=final, layers=cells[: len(asked)]
            )
        )
        if place < len(params.positions) - 1:
            yield  # the next position is the next piece
    return LogitLens(
        ids=ids, tokens=[token_text(i) for i in ids], layers=layer_count, positions=positions, forward=inspector.kind
    )


def logit_lens(
    inspector: ModelInspector, ids: list[int], params: LensParams, layer_count: int, token_text: token_choice.TokenText
) -> LogitLens:
    """The lens of `params`, every piece at once on the calling thread."""
    return run_to_end(logit_lens_passes(inspector, ids, params, layer_count, token_text))


def inspect_logit_lens(
    lm: LanguageModel, lean: bool, ids: list[int], params: LensParams, layer_count: int
) -> Passes[LogitLens]:
    """`logit_lens_passes` by the forward the engine serves `lm` with; each piece for the engine thread (the
    inspector is chosen in the first)."""
    return (yield from logit_lens_passes(inspector_for(lm, lean), ids, params, layer_count, lm.token_text))
