"""GENAI_COMPILED_STEP=on over real HTTP (uvicorn in a thread): the compiled layer under what the engine meets
when serving: a burst of streams from idle, a long prompt's prefill while others decode, a client that goes
away mid-stream, embeddings beside them; the service goes on, and a request alone gets what it got before."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from servers import serve

from service.config import Settings
from service.language.llama_decoder import LlamaDecoder
from service.language.loading import load_language_model
from service.state import LoadedModels

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "Water boils at"]


@pytest.fixture(scope="module")
def compiled_server(settings: Settings, loaded_models: LoadedModels) -> Iterator[str]:
    on = settings.model_copy(update={"weights": "gguf", "compiled_step": "on"})
    lm = load_language_model(on.lm_model, dtype="float32", cache_dir=on.cache_dir, weights="gguf", compiled_step=2)
    assert LlamaDecoder.shared(lm).compiled is not None, "the compiled layer did not load (see the log)"
    with serve(on, dataclasses.replace(loaded_models, language=lm)) as base:
        yield base


async def _generate(http: httpx.AsyncClient, prompt: str, tokens: int) -> dict[str, Any]:
    response = await http.post(
        "/generate", json={"prompt": prompt, "max_new_tokens": tokens, "ignore_eos": True, "temperature": 0}
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _stream_then_leave(http: httpx.AsyncClient) -> int:
    """Read a stream's first event and hang up."""
    body = {"prompt": "Tell me a long story.", "max_new_tokens": 200, "ignore_eos": True, "stream": True}
    async with http.stream("POST", "/generate", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                return 1
    return 0


def test_a_burst_with_a_long_prefill_and_a_leaving_client(compiled_server: str) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(base_url=compiled_server, timeout=120) as http:
            info = (await http.get("/info")).json()
            assert info["language_model"]["compiled_step"] is True and info["language_model"]["weights"] == "gguf"
            before = [await _generate(http, p, 16) for p in PROMPTS]  # alone, from idle
            long_prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 150)  # ~1,350 tokens
            burst = [_generate(http, PROMPTS[i % 4], 24) for i in range(10)]
            burst.append(_generate(http, long_prompt, 8))  # a prefill of ~1,350 tokens among the decodes
            model = info["language_model"]["model_id"]
            embeddings = http.post("/v1/embeddings", json={"input": PROMPTS, "model": model})
            results: list[Any] = list(await asyncio.gather(*burst, _stream_then_leave(http), embeddings))
            answers = results[:11]
            assert all(a["finish_reason"] == "length" for a in answers)
            assert [a["usage"]["completion_tokens"] for a in answers] == [24] * 10 + [8]
            assert answers[10]["usage"]["prompt_tokens"] > 1000
            assert results[11] == 1
            vectors = results[12]
            assert vectors.status_code == 200, vectors.text
            assert len(vectors.json()["data"]) == 4
            assert (await http.get("/health")).status_code == 200
            for _ in range(100):  # the leaving client's sequence is let go
                engine = (await http.get("/info")).json()["engine"]
                if engine["running"] == 0 and engine["waiting"] == 0:
                    break
                await asyncio.sleep(0.1)
            assert engine["running"] == 0 and engine["waiting"] == 0
            after = [await _generate(http, p, 16) for p in PROMPTS]
            assert [a["ids"] for a in after] == [b["ids"] for b in before]  # alone: the same greedy tokens
            assert before[0]["text"].startswith(" Paris")

    asyncio.run(run())
