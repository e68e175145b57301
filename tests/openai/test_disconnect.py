"""A client that goes away frees its batch slot: streamed or not, the generation is cancelled (peers regress here)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI

LONG = {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "ignore_eos": True}


async def _wait_for_cancellation(app: FastAPI, cancelled_before: float, seconds: float = 20.0) -> None:
    """The engine retires the request as `cancelled` and goes idle, long before its 400 tokens are done."""
    engine = app.state.models.engine
    deadline = time.monotonic() + seconds
    while _cancelled(app) < cancelled_before + 1 or engine.running_count or engine.waiting_count:
        assert time.monotonic() < deadline, "the generation kept running after its client left"
        await asyncio.sleep(0.05)
    assert _cancelled(app) == cancelled_before + 1


def _cancelled(app: FastAPI) -> float:
    return app.state.metrics.registry.get_sample_value("genai_generations_total", {"finish_reason": "cancelled"}) or 0.0


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_closing_a_stream_cancels_the_generation(app: FastAPI, threaded_server: str, path: str) -> None:
    body = {**LONG, "stream": True}
    if path.endswith("chat/completions"):
        body = {
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            **{k: v for k, v in body.items() if k != "prompt"},
        }
    before = _cancelled(app)
    async with (
        httpx.AsyncClient(base_url=threaded_server, timeout=60) as http,
        http.stream("POST", path, json=body) as response,
    ):
        assert response.status_code == 200
        chunks = 0
        async for line in response.aiter_lines():
            chunks += line.startswith("data: ")
            if chunks >= 3:
                break  # leave mid-stream
    await _wait_for_cancellation(app, before)


async def test_a_client_timeout_cancels_a_whole_response(app: FastAPI, threaded_server: str) -> None:
    before = _cancelled(app)
    async with httpx.AsyncClient(base_url=threaded_server, timeout=1.0) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/completions", json=LONG)
    await _wait_for_cancellation(app, before)
