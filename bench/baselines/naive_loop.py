"""Baseline: the course notebook's naive generation loop, served.

    .venv/bin/python bench/baselines/naive_loop.py --port 8002

Each new token runs a full forward pass over the whole sequence so far (no KV cache) and takes the
argmax. Same endpoints and JSON shapes as the service and `per_request.py`; only `/generate` differs.
"""

from __future__ import annotations

import time

import torch
from common import LanguageModel, serve  # bench/baselines/common.py


def generate(
    lm: LanguageModel, ids: list[int], max_new_tokens: int, ignore_eos: bool
) -> tuple[list[int], float | None]:
    started = time.perf_counter()
    first_at: float | None = None
    sequence = torch.tensor([ids], device=lm.device)
    new_ids: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = lm.module()(sequence, use_cache=False).logits[0, -1]
            if ignore_eos:
                logits[list(lm.eos_token_ids)] = float("-inf")
            token = int(torch.argmax(logits))
            if first_at is None:
                first_at = time.perf_counter()
            new_ids.append(token)
            if token in lm.eos_token_ids:
                break
            sequence = torch.cat([sequence, torch.tensor([[token]], device=lm.device)], dim=1)
    return new_ids, (first_at - started) if first_at is not None else None


if __name__ == "__main__":
    serve(generate, "naive loop baseline (full forward per token, no KV cache)")
