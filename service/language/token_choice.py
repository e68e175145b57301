"""From logits to tokens and reported log-probabilities: the glue between a forward pass's output and
what requests hear (`Candidate`, `Distribution`), beside the per-row choosing in sampling.py.

Every tensor here is float32 and already cut to the tokenizer's vocabulary (`vocab`). Log-probabilities
of generated tokens and their alternatives are the model's own (log-softmax of the raw logits); a
next-token distribution is at the temperature its request asked for (`temperature_scaled`). Explained
choices and stages come from the chooser's own steps (`sampler_steps`), summarized by sampler_explain.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from service.language.events import Candidate, Distribution, TokenExplanation
from service.language.grammar import mask_logits
from service.language.sampler_explain import TokenText as TokenText  # a token's text as `/tokenize` shows it
from service.language.sampler_explain import explain_choice, summarize_stages
from service.language.sampling import SamplingParams, ScoredStage, sampler_steps, temperature_scaled
from service.language.sequence import GenerationState


def choose_tokens(
    logits: torch.Tensor, rows: Sequence[GenerationState], token_text: TokenText
) -> tuple[list[int], list[TokenExplanation | None]]:
    """One token per row of `logits` [rows, vocab]: plain greedy rows that want no explanation by one
    argmax for all of them (a constrained one's row masked by its grammar first), the others by their own
    chooser (grammar, sampling, logit bias, penalties, explanation) over their context: each row with its
    own settings, so one batch mixes any, and a row without a constraint sees its logits untouched. Also
    each row's explanation (None where not asked)."""
    chosen = [0] * len(rows)
    explained: list[TokenExplanation | None] = [None] * len(rows)
    batch_greedy = [row for row, seq in enumerate(rows) if seq.params.is_plain_greedy and not seq.params.explain]
    if batch_greedy:
        scores = logits[batch_greedy]  # a copy (advanced indexing): masking it leaves `logits` as it was
        for at, row in enumerate(batch_greedy):
            grammar = rows[row].grammar
            if grammar is not None:
                scores[at].masked_fill_(~grammar.allowed(), float("-inf"))
        for row, token in zip(batch_greedy, torch.argmax(scores, dim=-1).tolist(), strict=True):
            chosen[row] = token
    for row, seq in enumerate(rows):
        if seq.params.explain:
            chosen[row], explained[row] = explained_choice(seq, logits[row], seq.context, token_text)
        elif not seq.params.is_plain_greedy:
            allowed = seq.grammar.allowed() if seq.grammar is not None else None
            chosen[row] = seq.chooser.choose(logits[row], seq.context, seq.generated, allowed)
    return chosen, explained


def constrained_greedy(seq: GenerationState, logits: torch.Tensor) -> int:
    """Greedy's token for a constrained row from `logits` [vocab]: the argmax of what its grammar allows."""
    assert seq.grammar is not None
    return int(torch.argmax(mask_logits(logits, seq.grammar.allowed())))


def explained_choice(
    seq: GenerationState, logits: torch.Tensor, context: list[int], token_text: TokenText
) -> tuple[int, TokenExplanation]:
    """The row's choice from `logits` [vocab] after `context` (its prompt, then what it generated), by its
    chooser (among what its grammar allows, when constrained: the trace's `grammar` stage), and why."""
    allowed = seq.grammar.allowed() if seq.grammar is not None else None
    token, trace = seq.chooser.choose_explained(logits, context, context[len(seq.prompt_ids) :], allowed)
    return token, explain_choice(trace, token, seq.params.top_alternatives, token_text)


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
        for i, lp in zip(token_ids, logprobs, strict=True)
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


def distribution(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    prompt_ids: list[int],
    token_text: TokenText,
    explain_with: SamplingParams | None = None,
) -> Distribution:
    """The `top_k` likeliest next tokens after a prompt, from its last position's `logits` [vocab], at
    `temperature`; with `explain_with`, also the sampler's stages under those settings (the chooser's own
    steps, `sampler_steps`, as a sampled first token of a generation after this prompt would see them: the
    repetition penalty over the prompt, the frequency and presence penalties over no generated token yet)."""
    logprobs = torch.log_softmax(temperature_scaled(logits, temperature), dim=-1)  # [vocab]
    stages = None
    if explain_with is not None:
        record: list[ScoredStage] = []
        sampler_steps(logits, prompt_ids, explain_with, sample=True, record=record, generated_ids=[])
        stages, _ = summarize_stages(record, top_k, token_text)
    return Distribution(
        candidates=top_candidates(logprobs, top_k, token_text), prompt_tokens=len(prompt_ids), stages=stages
    )


def prompt_logprobs(
    logits: torch.Tensor, ids: list[int], top_n: int, token_text: TokenText
) -> list[tuple[float, list[Candidate]]]:
    """For each of `ids` after the first: its log-probability given the tokens before it, and the `top_n`
    likeliest tokens at its place; from `logits` [len(ids), vocab] after every position of the prompt."""
    logprobs = torch.log_softmax(logits[:-1], dim=-1)  # [len(ids) - 1, vocab]: position p predicts ids[p + 1]
    chosen = logprobs_of(logprobs, ids[1:])
    top = torch.topk(logprobs, top_n) if top_n > 0 else None
    return [
        (lp, candidates(top.indices[pos].tolist(), top.values[pos].tolist(), token_text) if top is not None else [])
        for pos, lp in enumerate(chosen)
    ]
