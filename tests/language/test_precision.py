"""bfloat16, the default precision on CPUs with native bfloat16: how `auto` picks it, and that the lean
decoder in bfloat16 stays close to float32 (bench/precision.py measures the same on 32 prompts)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from service.config import Settings
from service.language.engine import GenerationEngine
from service.language.loading import cpu_has_native_bf16, load_language_model, resolve_dtype
from service.language.model import LanguageModel
from service.language.sampling import SamplingParams

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "Water boils at",
    "The chemical symbol for gold is",
    "Two plus two equals",
    "Roses are red, violets are",
    "import numpy as",
]


def test_auto_is_bfloat16_on_cuda_and_on_cpus_with_native_bfloat16() -> None:
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        flags = cpuinfo.read()
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.fixture(scope="module")
def bf16_model(settings: Settings) -> LanguageModel:
    return load_language_model(settings.lm_model, dtype="bfloat16", cache_dir=settings.cache_dir, weights="dense")


def next_token_probabilities(engine: GenerationEngine, lm: LanguageModel, prompts: list[str]) -> torch.Tensor:
    async def score() -> torch.Tensor:
        logits = await engine.next_token_logits([lm.encode(p) for p in prompts])
        return torch.softmax(logits[:, : lm.vocab_size], dim=-1)

    engine.start()
    try:
        return asyncio.run(score())
    finally:
        engine.shutdown()


def test_bfloat16_next_tokens_stay_close_to_float32(
    settings: Settings, language_model: LanguageModel, bf16_model: LanguageModel
) -> None:
    exact = next_token_probabilities(GenerationEngine(language_model, settings), language_model, PROMPTS)
    fast = next_token_probabilities(GenerationEngine(bf16_model, settings), bf16_model, PROMPTS)
    assert language_model.dtype == torch.float32 and bf16_model.dtype == torch.bfloat16
    agree = int((exact.argmax(-1) == fast.argmax(-1)).sum())
    assert agree >= len(PROMPTS) - 1, f"top-1 agreement {agree}/{len(PROMPTS)}"
    assert (exact - fast).abs().max().item() < 0.1
    paris = bf16_model.encode(" Paris")[0]
    assert int(fast[0].argmax()) == paris


def test_bfloat16_engine_generates_batched(settings: Settings, bf16_model: LanguageModel) -> None:
    engine = GenerationEngine(bf16_model, settings)

    async def generate_all() -> list[list[int]]:
        handles = [
            engine.submit(bf16_model.encode(p), SamplingParams(max_new_tokens=12, ignore_eos=True)) for p in PROMPTS
        ]
        return [finish.ids for _, finish in await asyncio.gather(*(h.result() for h in handles))]

    engine.start()
    try:
        results = asyncio.run(generate_all())
    finally:
        engine.shutdown()
    assert all(len(ids) == 12 for ids in results)
    assert bf16_model.detokenize(results[0]).startswith(" Paris")
