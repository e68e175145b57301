"""Baseline: a FastAPI server that calls `model.generate` once per request (no batching, no KV reuse across requests).

    .venv/bin/python bench/baselines/per_request.py --port 8001

Same embedded model and the same JSON shapes as the service (`/generate`, `/next-token-probs`,
`/tokenize`), so the load generator is shared. Sync endpoints on FastAPI's threadpool: concurrent
requests each run their own `generate` side by side. Time to first token is measured inside
`generate` (a stopping criterion notes when it is first called, i.e. when the first token exists).
"""

from __future__ import annotations

import time

import torch
from common import LanguageModel, serve  # bench/baselines/common.py
from transformers import StoppingCriteria, StoppingCriteriaList


class _FirstToken(StoppingCriteria):
    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids, scores, **kwargs):  # type: ignore[no-untyped-def]
        if self.at is None:
            self.at = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def generate(
    lm: LanguageModel, ids: list[int], max_new_tokens: int, ignore_eos: bool
) -> tuple[list[int], float | None]:
    started = time.perf_counter()
    first = _FirstToken()
    input_ids = torch.tensor([ids], device=lm.device)
    with torch.inference_mode():
        out = lm.module().generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens if ignore_eos else None,  # EOS masked out until the length is reached
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=lm.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([first]),
        )
    new_ids = [int(t) for t in out[0, len(ids) :]]
    return new_ids, (first.at - started) if first.at is not None else None


if __name__ == "__main__":
    serve(generate, "per-request model.generate baseline")
