"""One-command GPU check, for a session lent a CUDA machine:

    python bench/gpu_check.py

Loads the embedded model on CUDA in bfloat16 (and float16), checks its next-token distribution against
float32 on the CPU, checks that batched greedy output equals each request alone, and measures
engine tokens/s at batch 1 and 16. Exits non-zero if CUDA is missing or a check fails.
"""

from __future__ import annotations

import asyncio
import sys
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
    "Water boils at",
    "The quick brown fox jumps over",
    "In 1492, Columbus",
    "Hello, my name is",
    "Two plus two equals",
]


async def rate(engine: GenerationEngine, lm: LanguageModel, batch: int, tokens: int = 128) -> float:
    params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
    started = time.perf_counter()
    handles = [engine.submit(lm.encode(PROMPTS[i % len(PROMPTS)]), params) for i in range(batch)]
    await asyncio.gather(*(h.result() for h in handles))
    return batch * tokens / (time.perf_counter() - started)


async def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    print(torch.cuda.get_device_name(), torch.__version__)
    settings = Settings(max_batch_size=16)
    cpu = load_language_model(
        settings.lm_model, device="cpu", dtype="float32", cache_dir=settings.cache_dir, weights="dense", lean=False
    )
    ok = True
    print("| dtype | top-1 = fp32 CPU | max |Δp| | batched = alone | tok/s batch 1 | tok/s batch 16 |")
    print("|---|---|---|---|---|---|")
    for dtype in ("bfloat16", "float16", "float32"):
        lm = load_language_model(settings.lm_model, device="cuda", dtype=dtype, cache_dir=settings.cache_dir)
        agree, worst = 0, 0.0
        for prompt in PROMPTS:
            with torch.inference_mode():
                ref = torch.softmax(cpu.module()(torch.tensor([cpu.encode(prompt)])).logits[0, -1].float(), -1)
                got = torch.softmax(
                    lm.module()(torch.tensor([lm.encode(prompt)], device="cuda")).logits[0, -1].float(), -1
                ).cpu()
            agree += int(got.argmax() == ref.argmax())
            worst = max(worst, float((got - ref).abs().max()))
        engine = GenerationEngine(lm, settings)
        engine.start()
        params = SamplingParams(max_new_tokens=24, ignore_eos=True)
        alone = [(await engine.submit(lm.encode(p), params).result())[1].ids for p in PROMPTS]
        together = [(await h.result())[1].ids for h in [engine.submit(lm.encode(p), params) for p in PROMPTS]]
        same = sum(a == b for a, b in zip(alone, together, strict=True))
        await rate(engine, lm, 2, 8)
        r1, r16 = await rate(engine, lm, 1), await rate(engine, lm, 16)
        engine.shutdown()
        print(
            f"| {dtype} | {agree}/{len(PROMPTS)} | {worst:.4f} | {same}/{len(PROMPTS)} | {r1:.1f} | {r16:.1f} |",
            flush=True,
        )
        ok &= agree >= len(PROMPTS) - 1 and (dtype != "float32" or same == len(PROMPTS))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
