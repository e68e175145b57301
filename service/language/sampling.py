"""Choosing the next token from a row of logits: greedy, or sampled with temperature / top-k / top-p,
with a repetition penalty, and each request's own seeded generator. `temperature_scaled` is the one
temperature routine: sampling here and the next-token distributions (token_choice.py) both use it.

Reported probabilities are always the model's own distribution (softmax of the raw logits, temperature
1, before any filter), so the numbers mean the same whatever sampling settings a request used; the
filters only decide which token is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) every token outside the top-k and outside the smallest set whose mass reaches top-p."""
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(-1, sorted_idx, remove), float("-inf"))
    return logits


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
        p = self.params
        if p.repetition_penalty != 1.0 and seen_ids:
            logits = apply_repetition_penalty(logits, torch.tensor(seen_ids, dtype=torch.long, device=logits.device), p.repetition_penalty)
        if not p.do_sample or p.temperature <= torch.finfo(logits.dtype).tiny:
            # Zero is greedy, and so is the limit: a temperature too small for the logits' dtype would
            # divide by zero (NaN probabilities) instead of concentrating all mass on the argmax.
            return int(torch.argmax(logits))
        logits = filter_top_k_top_p(temperature_scaled(logits, p.temperature), p.top_k, p.top_p)
        probs = logits.softmax(-1).cpu()
        return int(torch.multinomial(probs, 1, generator=self.generator))
