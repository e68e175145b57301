"""From logits to tokens and reported log-probabilities: the glue between a forward pass's output and
what requests hear (`Candidate`, `Distribution`), beside the per-row choosing in sampling.py.

Every tensor here is float32 and already cut to the tokenizer's vocabulary (`vocab`). Log-probabilities
of generated tokens and their alternatives are the model's own (log-softmax of the raw logits); a
next-token distribution is at the temperature its request asked for (`temperature_scaled`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from service.language.events import Candidate, Distribution
from service.language.sampling import temperature_scaled
from service.language.sequence import GenerationState

TokenText = Callable[[int], str]  # a token's text as `/tokenize` shows it (LanguageModel.token_text)


def choose_tokens(logits: torch.Tensor, rows: Sequence[GenerationState]) -> list[int]:
    """One token per row of `logits` [rows, vocab]: plain greedy rows by one argmax for all of them,
    the others by their own chooser (sampling, repetition penalty) over their context."""
    chosen = [0] * len(rows)
    greedy_rows = [row for row, seq in enumerate(rows) if seq.params.is_plain_greedy]
    if greedy_rows:
        for row, token in zip(greedy_rows, torch.argmax(logits[greedy_rows], dim=-1).tolist()):
            chosen[row] = token
    for row, seq in enumerate(rows):
        if not seq.params.is_plain_greedy:
            chosen[row] = seq.chooser.choose(logits[row], seq.context)
    return chosen


def logprobs_of(logprobs: torch.Tensor, token_ids: list[int]) -> list[float]:
    """Row i's log-probability of `token_ids[i]`, from `logprobs` [rows, vocab]."""
    index = torch.tensor(token_ids, dtype=torch.long, device=logprobs.device)[:, None]  # [rows, 1]
    return logprobs.gather(-1, index)[:, 0].tolist()


def greedy_path(logits: torch.Tensor) -> tuple[torch.Tensor, list[list[int]], list[list[float]]]:
    """For logits [rows, positions, vocab] (a step over checked drafts): the log-probabilities (same shape),
    greedy's token at every position [rows][positions], and that token's log-probability [rows][positions]."""
    logprobs = torch.log_softmax(logits, dim=-1)
    best = logits.argmax(dim=-1)  # [rows, positions]
    best_logprobs = logprobs.gather(-1, best[..., None])[..., 0]  # [rows, positions]
    return logprobs, best.tolist(), best_logprobs.tolist()


def candidates(token_ids: list[int], logprobs: list[float], token_text: TokenText) -> list[Candidate]:
    return [
        Candidate(id=i, token=token_text(i), probability=math.exp(lp), logprob=lp)
        for i, lp in zip(token_ids, logprobs)
    ]


def top_candidates(logprobs: torch.Tensor, n: int, token_text: TokenText) -> list[Candidate]:
    """The `n` likeliest tokens of one position's `logprobs` [vocab], likeliest first."""
    top = torch.topk(logprobs, n)
    return candidates(top.indices.tolist(), top.values.tolist(), token_text)


def alternatives(seq: GenerationState, logprobs: torch.Tensor, token_text: TokenText) -> list[Candidate] | None:
    """A step's likeliest tokens from its `logprobs` [vocab], when the request asked for them (`top_alternatives`)."""
    if not seq.params.top_alternatives:
        return None
    return top_candidates(logprobs, seq.params.top_alternatives, token_text)


def distribution(logits: torch.Tensor, temperature: float, top_k: int, prompt_tokens: int, token_text: TokenText) -> Distribution:
    """The `top_k` likeliest next tokens after a prompt, from its last position's `logits` [vocab], at `temperature`."""
    logprobs = torch.log_softmax(temperature_scaled(logits, temperature), dim=-1)  # [vocab]
    return Distribution(candidates=top_candidates(logprobs, top_k, token_text), prompt_tokens=prompt_tokens)


def prompt_logprobs(logits: torch.Tensor, ids: list[int], top_n: int, token_text: TokenText) -> list[tuple[float, list[Candidate]]]:
    """For each of `ids` after the first: its log-probability given the tokens before it, and the `top_n`
    likeliest tokens at its place; from `logits` [len(ids), vocab] after every position of the prompt."""
    logprobs = torch.log_softmax(logits[:-1], dim=-1)  # [len(ids) - 1, vocab]: position p predicts ids[p + 1]
    chosen = logprobs_of(logprobs, ids[1:])
    top = torch.topk(logprobs, top_n) if top_n > 0 else None
    return [
        (lp, candidates(top.indices[pos].tolist(), top.values[pos].tolist(), token_text) if top is not None else [])
        for pos, lp in enumerate(chosen)
    ]
