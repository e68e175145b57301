"""Where a decode step's time goes: tokens/s of the engine alone (no HTTP) by batch size and dtype.

    .venv/bin/python bench/engine_steps.py [--dtypes float32 bfloat16] [--batches 1 8 16] [--tokens 64] [--forwards lean transformers]

Prints one table. Each row: N concurrent greedy requests of `--tokens` new tokens (ignore_eos),
aggregate tokens/s and the mean decode-step time, through the lean Llama decoder or transformers' forward.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch

from service.config import Settings
from service.language.engine import GenerationEngine
from service.language.loading import load_language_model
from service.language.model import LanguageModel
from service.language.sampling import SamplingParams

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "Hello, my name is",
    "The quick brown fox",
    "In 1492, Columbus",
    "Water boils at",
    "The best way to learn is",
]


async def run_batch(engine: GenerationEngine, lm: LanguageModel, batch: int, tokens: int) -> tuple[float, float]:
    steps: list[float] = []
    engine.step_listeners.append(lambda size, seconds: steps.append(seconds))
    params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
    started = time.perf_counter()
    handles = [engine.submit(lm.encode(PROMPTS[i % len(PROMPTS)]), params) for i in range(batch)]
    await asyncio.gather(*(h.result() for h in handles))
    elapsed = time.perf_counter() - started
    engine.step_listeners.pop()
    return batch * tokens / elapsed, sum(steps) / max(1, len(steps))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 16])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--forwards",
        nargs="+",
        default=["lean", "transformers"],
        help="lean = the lean Llama decoder, transformers = its own forward",
    )
    parser.add_argument(
        "--prompt-lookup",
        type=int,
        default=0,
        help="GENAI_PROMPT_LOOKUP_TOKENS (default 0: one token a step, the raw step speed)",
    )
    args = parser.parse_args()
    settings = Settings()
    print(f"torch {torch.__version__}, threads {settings.torch_threads or 'all CPUs'} on the engine thread")
    torch.set_num_threads(1)  # only the engine thread runs torch in parallel (see GenerationEngine.start)
    print("| forward | dtype | batch | tokens/s | mean step ms |")
    print("|---|---|---|---|---|")
    for dtype in args.dtypes:
        lm = load_language_model(settings.lm_model, dtype=dtype, cache_dir=settings.cache_dir, weights="dense")
        for forward in args.forwards:
            engine = GenerationEngine(
                lm,
                settings.model_copy(
                    update={
                        "max_batch_size": max(args.batches),
                        "max_running_requests": max(args.batches),
                        "lean_decoder": forward == "lean",
                        "prompt_lookup_tokens": args.prompt_lookup,
                    }
                ),
            )
            engine.start()
            await run_batch(engine, lm, 2, 8)  # warm-up
            for batch in args.batches:
                rate, step = await run_batch(engine, lm, batch, args.tokens)
                print(
                    f"| {engine.describe()['forward']} | {dtype} | {batch} | {rate:.1f} | {step * 1000:.1f} |",
                    flush=True,
                )
            engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
