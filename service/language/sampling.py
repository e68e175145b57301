"""Choosing the next token from a row of logits: greedy, or sampled with temperature / top-k / top-p,
with a repetition penalty, and each request's own seeded generator. `temperature_scaled` is the one
temperature routine: sampling here and the next-token distributions (token_choice.py) both use it.

Reported probabilities are always the model's own distribution (softmax of the raw logits, temperature
1, before any filter), so the numbers mean the same whatever sampling settings a request used; the
filters only decide which token is drawn.

The sampler's steps run in one order (`sampler_steps`): the model's logits, the repetition penalty,
the temperature, top-k, top-p. A sampled token is drawn by inverse CDF from one uniform number `u` of
the request's generator: tokens lined up likeliest first (ties: lower id first, `likeliest_first`), the
first whose running total of probability passes `u`. Asked to (`choose_explained`), the chooser hands
back the scores after each step and its draw, so an explanation shows exactly what the token came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_alternatives: int = 0
    timeout_s: float | None = None
    explain: bool = False  # each step also reports the sampler's stages and its draw (sampler_explain.py)

    @property
    def is_plain_greedy(self) -> bool:
        """Greedy with nothing that changes the logits: the batch can take one argmax for all such rows."""
        return not self.do_sample and self.repetition_penalty == 1.0


def apply_repetition_penalty(logits: torch.Tensor, seen_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: divide positive scores of seen tokens, multiply negative ones."""
    if penalty == 1.0 or seen_ids.numel() == 0:
        return logits
    scores = logits.gather(-1, seen_ids)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(-1, seen_ids, scores)


def temperature_scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`logits / temperature` along the last dimension ([..., vocab] in, same shape out), shifted so each
    row's top score is 0 (softmax does not see the shift) and floored at the dtype's lowest finite value.

    Shifting before dividing, and the floor, make a tiny temperature tend to the greedy limit (all mass on
    the top token) instead of overflowing to inf - inf = NaN; a temperature below the dtype's smallest
    normal number (5e-324 is 0 in float32) counts as that number."""
    finfo = torch.finfo(logits.dtype)
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    return (shifted / max(temperature, finfo.tiny)).clamp(min=finfo.min)


def filter_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Mask (to -inf) every token scored below the k-th best (ties with it stay); 0 or >= vocab keeps all."""
    if not 0 < top_k < logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k).values[..., -1, None]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask (to -inf) every token outside the smallest set, likeliest first, whose mass reaches top-p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False  # always keep the most likely token
    return logits.masked_fill(remove.scatter(-1, sorted_idx, remove), float("-inf"))


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) every token outside the top-k and outside the smallest set whose mass reaches top-p."""
    return filter_top_p(filter_top_k(logits, top_k), top_p)


StageName = Literal["model", "repetition_penalty", "temperature", "top_k", "top_p"]


@dataclass(frozen=True)
class ScoredStage:
    """The scores after one sampler step, [vocab]; their softmax (`stage_probabilities`) is its distribution."""

    name: StageName
    logits: torch.Tensor


def sampler_steps(
    logits: torch.Tensor,
    seen_ids: list[int],
    params: SamplingParams,
    *,
    sample: bool,
    record: list[ScoredStage] | None = None,
) -> torch.Tensor:
    """Apply the sampler's steps to one row of float32 `logits` [vocab], in the order the chooser uses:
    the repetition penalty over `seen_ids`, then (when `sample`) the temperature, top-k and top-p.
    Returns the final scores; appends each active step's scores to `record` when given ("model" first)."""
    if record is not None:
        record.append(ScoredStage("model", logits))
    if params.repetition_penalty != 1.0:
        if seen_ids:
            seen = torch.tensor(seen_ids, dtype=torch.long, device=logits.device)
            logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
        if record is not None:
            record.append(ScoredStage("repetition_penalty", logits))
    if not sample:
        return logits
    logits = temperature_scaled(logits, params.temperature)
    if record is not None and params.temperature != 1.0:
        record.append(ScoredStage("temperature", logits))
    if 0 < params.top_k < logits.shape[-1]:
        logits = filter_top_k(logits, params.top_k)
        if record is not None:
            record.append(ScoredStage("top_k", logits))
    if params.top_p < 1.0:
        logits = filter_top_p(logits, params.top_p)
        if record is not None:
            record.append(ScoredStage("top_p", logits))
    return logits


def stage_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """A stage's distribution: the softmax of its scores [vocab], in float64 so that it sums to 1 within
    1e-15 and a drawn `u` meets the same running totals a client can add up from the reported numbers."""
    return logits.double().softmax(-1)


def likeliest_first(probs: torch.Tensor, n: int) -> torch.Tensor:
    """The ids of the `n` likeliest tokens with nonzero probability (fewer when fewer have any), likeliest
    first and, among equals, lower id first: the order a draw walks. Sorts only what it needs."""
    vocab = probs.shape[-1]
    if n <= 0:
        return torch.zeros(0, dtype=torch.long, device=probs.device)
    if n < vocab:
        threshold = torch.topk(probs, n).values[-1]
        candidates = torch.nonzero(probs >= threshold if threshold > 0 else probs > 0)[:, 0]  # ascending ids
    else:
        candidates = torch.nonzero(probs > 0)[:, 0]
    order = torch.sort(probs[candidates], descending=True, stable=True).indices
    return candidates[order][:n]


# A first look at this many tokens finds most draws, each next look at 16 times as many; only a flat
# distribution needs the whole vocabulary sorted (a 49,152-token sort is ~5 ms on one core, a top-64 0.1 ms).
_DRAW_PREFIX = 64
_DRAW_GROWTH = 16


def inverse_cdf(probs: torch.Tensor, u: float) -> tuple[int, int]:
    """The token a uniform `u` in [0, 1) picks from `probs` [vocab, float64], and its rank: tokens lined
    up by `likeliest_first`, the first whose running total of probability exceeds `u` (the last token
    with any probability, should rounding leave the total at or below `u`)."""
    n = min(_DRAW_PREFIX, probs.shape[-1])
    while True:
        ids = likeliest_first(probs, n)
        totals = probs[ids].cumsum(-1)
        rank = int(
            torch.searchsorted(totals, torch.tensor([u], dtype=totals.dtype, device=totals.device), right=True)[0]
        )
        if rank < len(ids):
            return int(ids[rank]), rank
        if n >= probs.shape[-1] or len(ids) < n:  # every token with probability was looked at
            return int(ids[-1]), len(ids) - 1
        n = min(n * _DRAW_GROWTH, probs.shape[-1])


@dataclass(frozen=True)
class SamplerTrace:
    """How a token was chosen: the scores after each active step (`sampler_steps`; the last is what it
    was chosen from), and the draw: `u` for a sampled token (None for greedy, the argmax), its rank there."""

    stages: list[ScoredStage]
    u: float | None
    rank: int


@dataclass
class TokenChooser:
    """Per-request selection state: parameters and the request's own random generator."""

    params: SamplingParams
    generator: torch.Generator | None = field(default=None)

    @classmethod
    def create(cls, params: SamplingParams) -> TokenChooser:
        generator = None
        if params.do_sample:
            generator = torch.Generator(device="cpu")
            if params.seed is not None:
                generator.manual_seed(params.seed)
            else:
                generator.seed()
        return cls(params=params, generator=generator)

    def choose(self, logits: torch.Tensor, seen_ids: list[int]) -> int:
        """Pick the next token from one row of float32 logits [vocab]."""
        return self._choose(logits, seen_ids, None)[0]

    def choose_explained(self, logits: torch.Tensor, seen_ids: list[int]) -> tuple[int, SamplerTrace]:
        """The same choice as `choose` (and the same draw from the generator), with how it was made."""
        record: list[ScoredStage] = []
        token, u, rank = self._choose(logits, seen_ids, record)
        return token, SamplerTrace(stages=record, u=u, rank=rank)

    def _choose(
        self, logits: torch.Tensor, seen_ids: list[int], record: list[ScoredStage] | None
    ) -> tuple[int, float | None, int]:
        p = self.params
        # Zero is greedy, and so is the limit: a temperature too small for the logits' dtype would
        # divide by zero (NaN probabilities) instead of concentrating all mass on the argmax.
        greedy = not p.do_sample or p.temperature <= torch.finfo(logits.dtype).tiny
        scores = sampler_steps(logits, seen_ids, p, sample=not greedy, record=record)
        if greedy:
            return int(torch.argmax(scores)), None, 0
        u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        token, rank = inverse_cdf(stage_probabilities(scores), u)
        return token, u, rank
