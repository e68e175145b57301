"""The sampler, step by step: what a `SamplerTrace` (sampling.py) says about why a token was chosen, in
numbers a learner can check.

Each stage is the distribution after one sampler step, the softmax of the scores the chooser itself
computed (`stage_probabilities`, the function its draw uses), so the last stage is exactly the one the
token was drawn from. Per stage:
  * `kept`: tokens with nonzero probability;
  * `removed_mass`: the total variation distance from the stage before, sum of max(0, before - after)
    over the vocabulary: the probability mass taken from the tokens that lost some. For a cut (min-p,
    top-k, top-p) that is exactly the mass of the tokens cut; for a reshaping step (logit bias, the
    repetition, frequency and presence penalties, temperature) it is how much mass moved from some tokens
    to others. 0 for the model's own stage;
  * `top`: its likeliest tokens with nonzero probability, likeliest first, ties by lower id: the order a
    draw walks, so `u` and the running totals of `top` re-draw the token when its rank is within `top`.
The step's entropy, surprisal and margin are of the model's distribution (temperature 1), in nats.

Runs on the engine thread, only for rows that asked: a full-vocabulary softmax and a top-n per stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from service.language.events import Candidate, StageSummary, TokenDraw, TokenExplanation
from service.language.sampling import SamplerTrace, ScoredStage, likeliest_first, stage_probabilities

TokenText = Callable[[int], str]


def listed(probs: torch.Tensor, n: int, token_text: TokenText) -> list[Candidate]:
    """The `n` likeliest tokens of `probs` [vocab, float64] with nonzero probability, in draw order."""
    ids = likeliest_first(probs, n).tolist()
    values = probs[ids].tolist() if ids else []
    return [
        Candidate(id=i, token=token_text(i), probability=p, logprob=math.log(p))
        for i, p in zip(ids, values, strict=True)
    ]


def summarize_stages(
    stages: list[ScoredStage], top_n: int, token_text: TokenText
) -> tuple[list[StageSummary], list[torch.Tensor]]:
    """Each stage's summary, and its distribution [vocab, float64] (the first is the model's own)."""
    summaries: list[StageSummary] = []
    distributions: list[torch.Tensor] = []
    previous: torch.Tensor | None = None
    for stage in stages:
        probs = stage_probabilities(stage.logits)
        removed = 0.0 if previous is None else float((previous - probs).clamp(min=0).sum())
        summaries.append(
            StageSummary(
                name=stage.name,
                kept=int(torch.count_nonzero(probs)),
                removed_mass=removed,
                top=listed(probs, top_n, token_text),
            )
        )
        distributions.append(probs)
        previous = probs
    return summaries, distributions


def explain_choice(trace: SamplerTrace, token_id: int, top_n: int, token_text: TokenText) -> TokenExplanation:
    """Why `token_id` was chosen, from the chooser's own trace of that choice."""
    stages, distributions = summarize_stages(trace.stages, top_n, token_text)
    model = distributions[0]
    entropy = float(-torch.xlogy(model, model).sum())
    surprisal = -math.log(float(model[token_id])) if float(model[token_id]) > 0 else math.inf
    two = torch.topk(model, min(2, model.shape[-1])).values.tolist()
    margin = two[0] - two[1] if len(two) == 2 else two[0]
    return TokenExplanation(
        entropy=entropy,
        surprisal=surprisal,
        margin=margin,
        stages=stages,
        draw=TokenDraw(greedy=trace.u is None, u=trace.u, rank=trace.rank),
    )
