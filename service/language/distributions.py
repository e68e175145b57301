"""Next-token distribution requests (`/next-token-probs`): what the event loop queues, and how the engine
thread answers a whole queue of them with as few forward passes as it can, without touching the running
batch's rows (`RunningBatch.last_logits`)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass

from service.language import token_choice
from service.language.batch import RunningBatch
from service.language.events import Distribution
from service.language.sampling import SamplingParams

# The most tokens (rows × longest prompt) one padded forward pass takes: one long prompt must not make
# many short ones expensive.
MAX_PADDED_TOKENS = 8192


@dataclass
class DistributionRequest:
    prompt_ids: list[int]
    top_k: int
    temperature: float
    future: concurrent.futures.Future[Distribution]
    explain_with: SamplingParams | None = None  # also the sampler's stages under these settings


def serve_distributions(
    batch: RunningBatch, requests: list[DistributionRequest], vocab_size: int, token_text: token_choice.TokenText
) -> None:
    """Answer every request not cancelled, shortest prompts first, in padded chunks of bounded size."""
    live = sorted((r for r in requests if not r.future.cancelled()), key=lambda r: len(r.prompt_ids))
    chunk: list[DistributionRequest] = []
    for req in live:
        if chunk and (len(chunk) + 1) * len(req.prompt_ids) > MAX_PADDED_TOKENS:
            _answer(batch, chunk, vocab_size, token_text)
            chunk = []
        chunk.append(req)
    if chunk:
        _answer(batch, chunk, vocab_size, token_text)


def _answer(
    batch: RunningBatch, requests: list[DistributionRequest], vocab_size: int, token_text: token_choice.TokenText
) -> None:
    logits = batch.last_logits([r.prompt_ids for r in requests])[:, :vocab_size]  # [len(requests), vocab]
    for row, req in enumerate(requests):
        answer = token_choice.distribution(
            logits[row], req.temperature, req.top_k, req.prompt_ids, token_text, req.explain_with
        )
        if not req.future.done():
            req.future.set_result(answer)


def fail_distributions(requests: list[DistributionRequest], error: Callable[[], Exception]) -> None:
    """Fail every request not yet answered, each with its own exception (`error()`)."""
    for req in requests:
        if not req.future.done():
            req.future.set_exception(error())
