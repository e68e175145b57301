"""Choosing the next token from a row of logits: greedy, or sampled with temperature / min-p / top-k /
top-p, with a logit bias, a repetition penalty, frequency and presence penalties, and each request's own
seeded generator. `temperature_scaled` is the one
temperature routine: sampling here and the next-token distributions (token_choice.py) both use it.

Reported probabilities are always the model's own distribution (softmax of the raw logits, temperature
1, before any filter), so the numbers mean the same whatever sampling settings a request used; the
filters only decide which token is drawn.

The sampler's steps run in one order (`sampler_steps`), vLLM's: the model's logits, the grammar's mask
of a constrained request (grammar.py: the tokens its grammar does not allow go to -inf, so every later
step only reshapes and cuts what the grammar allows), the logit bias, the repetition penalty, the frequency penalty, the presence penalty (these change the logits, so greedy
decoding sees them too), then, when sampling, the temperature, min-p, top-k, top-p. The repetition
penalty counts every token of the context (prompt and output, as transformers); the frequency and
presence penalties only the generated tokens (as OpenAI and vLLM define them). A sampled token is drawn by inverse CDF from one uniform number `u` of
the request's generator: tokens lined up likeliest first (ties: lower id first, `likeliest_first`), the
first whose running total of probability passes `u`. Asked to (`choose_explained`), the chooser hands
back the scores after each step and its draw, so an explanation shows exactly what the token came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from service.language.grammar import Constraint, mask_logits


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
    min_p: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit), ids distinct
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    constraint: Constraint | None = None  # structured output: a JSON schema, regex or choice (grammar.py)

    @property
    def changes_logits(self) -> bool:
        """Whether a step before the temperature changes the logits (and so even greedy's choice)."""
        return (
            self.repetition_penalty != 1.0
            or bool(self.logit_bias)
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    @property
    def is_plain_greedy(self) -> bool:
        """Greedy with nothing that changes the logits: the batch can take one argmax for all such rows."""
        return not self.do_sample and not self.changes_logits


def apply_repetition_penalty(logits: torch.Tensor, seen_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: divide positive scores of seen tokens, multiply negative ones."""
    if penalty == 1.0 or seen_ids.numel() == 0:
        return logits
    scores = logits.gather(-1, seen_ids)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(-1, seen_ids, scores)


def apply_logit_bias(logits: torch.Tensor, bias: tuple[tuple[int, float], ...]) -> torch.Tensor:
    """Add each (token id, bias) to that token's logit (OpenAI's `logit_bias`; a new tensor)."""
    if not bias:
        return logits
    ids = torch.tensor([i for i, _ in bias], dtype=torch.long, device=logits.device)
    values = torch.tensor([b for _, b in bias], dtype=logits.dtype, device=logits.device)
    return logits.index_add(-1, ids, values)


def apply_frequency_penalty(logits: torch.Tensor, generated_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """OpenAI's frequency penalty: subtract `penalty` times the count of each token in the generated text."""
    if penalty == 0.0 or generated_ids.numel() == 0:
        return logits
    counts = torch.bincount(generated_ids, minlength=logits.shape[-1])[: logits.shape[-1]]
    return logits - penalty * counts.to(logits.dtype)


def apply_presence_penalty(logits: torch.Tensor, generated_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """OpenAI's presence penalty: subtract `penalty` once from each token that is in the generated text."""
    if penalty == 0.0 or generated_ids.numel() == 0:
        return logits
    present = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    present[generated_ids] = True
    return logits - penalty * present.to(logits.dtype)


def temperature_scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`logits / temperature` along the last dimension ([..., vocab] in, same shape out), shifted so each
    row's top score is 0 (softmax does not see the shift) and floored at the dtype's lowest finite value.

    Shifting before dividing, and the floor, make a tiny temperature tend to the greedy limit (all mass on
    the top token) instead of overflowing to inf - inf = NaN; a temperature below the dtype's smallest
    normal number (5e-324 is 0 in float32) counts as that number."""
    finfo = torch.finfo(logits.dtype)
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    return (shifted / max(temperature, finfo.tiny)).clamp(min=finfo.min)


def filter_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Mask (to -inf) every token whose probability is below `min_p` times the likeliest token's: in
    logits, below the top score + log(min_p). 0 keeps all; the likeliest token always stays."""
    if min_p <= 0.0:
        return logits
    threshold = logits.max(dim=-1, keepdim=True).values + math.log(min_p)
    return logits.masked_fill(logits < threshold, float("-inf"))


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


StageName = Literal[
    "model",
    "grammar",
    "logit_bias",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "temperature",
    "min_p",
    "top_k",
    "top_p",
]
STAGE_ORDER: tuple[StageName, ...] = (
    "model",
    "grammar",
    "logit_bias",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "temperature",
    "min_p",
    "top_k",
    "top_p",
)
"""Every stage the sampler can apply, in the order it applies them (`sampler_steps`)."""


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
    generated_ids: list[int] | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply the sampler's steps to one row of float32 `logits` [vocab], in the order the chooser uses
    (`STAGE_ORDER`): the grammar's mask (`allowed`, bool [vocab], when the row is constrained), the logit bias, the repetition penalty over `seen_ids` (the whole context), the
    frequency and presence penalties over `generated_ids` (the output so far; none when not given), then
    (when `sample`) the temperature, min-p, top-k and top-p. Returns the final scores; appends each active
    step's scores to `record` when given ("model" first)."""

    def stage(name: StageName, scores: torch.Tensor) -> torch.Tensor:
        if record is not None:
            record.append(ScoredStage(name, scores))
        return scores

    stage("model", logits)
    if allowed is not None:
        logits = stage("grammar", mask_logits(logits, allowed))
    if params.logit_bias:
        logits = stage("logit_bias", apply_logit_bias(logits, params.logit_bias))
    if params.repetition_penalty != 1.0:
        if seen_ids:
            seen = torch.tensor(seen_ids, dtype=torch.long, device=logits.device)
            logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
        stage("repetition_penalty", logits)
    if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
        generated = torch.tensor(generated_ids or [], dtype=torch.long, device=logits.device)
        if params.frequency_penalty != 0.0:
            logits = stage("frequency_penalty", apply_frequency_penalty(logits, generated, params.frequency_penalty))
        if params.presence_penalty != 0.0:
            logits = stage("presence_penalty", apply_presence_penalty(logits, generated, params.presence_penalty))
    if not sample:
        return logits
    logits = temperature_scaled(logits, params.temperature)
    if params.temperature != 1.0:
        stage("temperature", logits)
    if params.min_p > 0.0:
        logits = stage("min_p", filter_min_p(logits, params.min_p))
    if 0 < params.top_k < logits.shape[-1]:
        logits = stage("top_k", filter_top_k(logits, params.top_k))
    if params.top_p < 1.0:
        logits = stage("top_p", filter_top_p(logits, params.top_p))
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

    def choose(
        self,
        logits: torch.Tensor,
        seen_ids: list[int],
        generated_ids: list[int] | None = None,
        allowed: torch.Tensor | None = None,
    ) -> int:
        """Pick the next token from one row of float32 logits [vocab], after the context `seen_ids` of which
        `generated_ids` is the generated part (for the frequency and presence penalties), among the tokens
        a grammar `allowed` (bool [vocab]; None: all)."""
        return self._choose(logits, seen_ids, generated_ids, None, allowed)[0]

    def choose_explained(
        self,
        logits: torch.Tensor,
        seen_ids: list[int],
        generated_ids: list[int] | None = None,
        allowed: torch.Tensor | None = None,
    ) -> tuple[int, SamplerTrace]:
        """The same choice as `choose` (and the same draw from the generator), with how it was made."""
        record: list[ScoredStage] = []
        token, u, rank = self._choose(logits, seen_ids, generated_ids, record, allowed)
        return token, SamplerTrace(stages=record, u=u, rank=rank)

    def _choose(
        self,
        logits: torch.Tensor,
        seen_ids: list[int],
        generated_ids: list[int] | None,
        record: list[ScoredStage] | None,
        allowed: torch.Tensor | None = None,
    ) -> tuple[int, float | None, int]:
        p = self.params
        # Zero is greedy, and so is the limit: a temperature too small for the logits' dtype would
        # divide by zero (NaN probabilities) instead of concentrating all mass on the argmax.
        greedy = not p.do_sample or p.temperature <= torch.finfo(logits.dtype).tiny
        scores = sampler_steps(
            logits, seen_ids, p, sample=not greedy, record=record, generated_ids=generated_ids, allowed=allowed
        )
        if greedy:
            return int(torch.argmax(scores)), None, 0
        u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        token, rank = inverse_cdf(stage_probabilities(scores), u)
        return token, u, rank
