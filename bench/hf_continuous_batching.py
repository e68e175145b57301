"""transformers' own continuous batching (`generate_batch`) against this service's engine, same model,
same 8 greedy requests of N tokens, in one process. The measurement behind writing our own scheduler.

    .venv/bin/python bench/hf_continuous_batching.py [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch
from transformers import GenerationConfig

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


async def engine_run(lm: LanguageModel, tokens: int) -> tuple[float, list[list[int]]]:
    engine = GenerationEngine(lm, Settings())
    engine.start()
    params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
    await engine.submit(lm.encode("Hi"), SamplingParams(max_new_tokens=4)).result()
    started = time.perf_counter()
    handles = [engine.submit(lm.encode(p), params) for p in PROMPTS]
    results = [(await h.result())[1].ids for h in handles]
    elapsed = time.perf_counter() - started
    engine.shutdown()
    return len(PROMPTS) * tokens / elapsed, results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    settings = Settings()
    lm = load_language_model(settings.lm_model, cache_dir=settings.cache_dir, weights="dense", lean=False)
    # transformers leaves GenerationConfig.__init__(**kwargs) unannotated: hence the no-untyped-call ignores
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=args.tokens, do_sample=False, eos_token_id=-1, pad_token_id=lm.tokenizer.pad_token_id
    )
    inputs = [lm.encode(p) for p in PROMPTS]
    with torch.inference_mode():
        lm.module().generate_batch(
            inputs=inputs[:2],
            generation_config=GenerationConfig(max_new_tokens=4, do_sample=False),  # type: ignore[no-untyped-call]
        )
        started = time.perf_counter()
        outputs = lm.module().generate_batch(inputs=inputs, generation_config=config)
        hf_rate = len(PROMPTS) * args.tokens / (time.perf_counter() - started)
    hf_ids = [outputs[k].generated_tokens for k in sorted(outputs, key=lambda k: int(str(k).split("_")[-1]))]
    ours_rate, ours_ids = asyncio.run(engine_run(lm, args.tokens))
    same = sum(a[: len(b)] == b[: len(a)] for a, b in zip(hf_ids, ours_ids, strict=True))
    print("| scheduler | 8 × greedy tokens/s | same tokens as the engine |")
    print("|---|---|---|")
    print(f"| transformers generate_batch | {hf_rate:.1f} | {same}/8 |")
    print(f"| genai-service engine | {ours_rate:.1f} | 8/8 |")


if __name__ == "__main__":
    main()
