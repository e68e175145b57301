"""float32 against bfloat16 on this machine: fidelity of the next-token distribution, greedy agreement
batched vs alone, and decode speed.

    .venv/bin/python bench/precision.py [--device cpu|cuda] [--tokens 32]

Prints one Markdown table (and appends it to bench/RESULTS.md with --record).
Fidelity: over a fixed prompt set, how often bfloat16's most likely next token is float32's, and the
largest absolute difference of any next-token probability. Batched vs alone: how many of the prompts'
greedy continuations (N tokens) differ when the 8 run in one batch instead of one by one.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import time
from pathlib import Path

import torch

from service.config import Settings
from service.language.engine import GenerationEngine
from service.language.model import LanguageModel, load_language_model
from service.language.sampling import SamplingParams

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "Hello, my name is",
    "The quick brown fox jumps over",
    "In 1492, Columbus",
    "Water boils at",
    "The best way to learn is",
    "My favourite colour is",
    "import numpy as",
    "The sun rises in the",
    "Two plus two equals",
    "Dear Sir or Madam,",
    "The largest planet in our solar system is",
    "To be or not to be,",
    "Photosynthesis is the process by which",
    "The Eiffel Tower is located in",
    "Monday, Tuesday,",
    "A haiku about autumn:",
    "The chemical symbol for gold is",
    "SELECT * FROM",
    "Paris is the capital of",
    "The meaning of life is",
    "She opened the door and saw",
    "Machine learning is",
    "The first man on the moon was",
    "for i in range(",
    "Roses are red, violets are",
    "The opposite of hot is",
    "Shakespeare wrote",
    "An apple a day",
    "The speed of light is",
]


async def next_token_probs(engine: GenerationEngine, lm: LanguageModel, prompt: str) -> torch.Tensor:
    """By the forward pass the engine serves with (the lean decoder for this model), one prompt alone."""
    logits = await engine.next_token_logits([lm.encode(prompt)])
    return torch.softmax(logits[0, : lm.vocab_size], dim=-1).cpu()


async def greedy(
    engine: GenerationEngine, lm: LanguageModel, prompts: list[str], tokens: int, together: bool
) -> tuple[list[list[int]], float]:
    params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
    started = time.perf_counter()
    if together:
        handles = [engine.submit(lm.encode(p), params) for p in prompts]
        results = [(await h.result())[1].ids for h in handles]
    else:
        results = [(await engine.submit(lm.encode(p), params).result())[1].ids for p in prompts]
    return results, len(prompts) * tokens / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    settings = Settings()
    torch.set_num_threads(1)  # only the engine thread runs torch in parallel (see GenerationEngine.start)
    models = {
        d: load_language_model(settings.lm_model, device=args.device, dtype=d, cache_dir=settings.cache_dir)
        for d in ("float32", "bfloat16")
    }
    reference: dict[str, torch.Tensor] = {}
    rows = []
    for dtype, lm in models.items():
        engine = GenerationEngine(lm, settings)
        engine.start()
        agree, worst = 0, 0.0
        for prompt in PROMPTS:
            probs = await next_token_probs(engine, lm, prompt)
            reference.setdefault(prompt, probs)  # float32 comes first
            agree += int(probs.argmax() == reference[prompt].argmax())
            worst = max(worst, float((probs - reference[prompt]).abs().max()))
        await greedy(engine, lm, PROMPTS[:2], 4, together=True)  # warm-up
        alone, rate1 = await greedy(engine, lm, PROMPTS[:8], args.tokens, together=False)
        batched, rate8 = await greedy(engine, lm, PROMPTS[:8], args.tokens, together=True)
        engine.shutdown()
        differ = sum(a != b for a, b in zip(alone, batched, strict=True))
        rows.append(f"| {dtype} | {agree}/{len(PROMPTS)} | {worst:.4f} | {differ}/8 | {rate1:.1f} | {rate8:.1f} |")
    table = "\n".join(
        [
            f"precision ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
            f"device {args.device}, torch {torch.__version__}, engine forward {engine.describe()['forward']})",
            "",
            "| dtype | top-1 = float32's | max |Δp| vs float32 | greedy batched ≠ alone | tok/s alone (batch 1) | tok/s 8 together |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.record:
        with (Path(__file__).parent / "RESULTS.md").open("a") as results:
            results.write("\n" + table + "\n")


if __name__ == "__main__":
    asyncio.run(main())
