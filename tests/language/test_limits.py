"""Configured limits: prompt length, body size, context length. A small-limit app shares the loaded model."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from service.state import LoadedModels


@pytest.fixture(scope="module")
async def strict_client(app: FastAPI, loaded_models: LoadedModels) -> AsyncIterator[httpx.AsyncClient]:
    """An app with small limits over the engine that the session's `app` fixture runs."""
    settings = Settings(max_prompt_tokens=8, max_new_tokens=16, max_top_k=5, max_text_chars=200, max_body_bytes=4096)
    strict = create_app(settings, models=loaded_models)
    # Share the session app's running engine instead of starting another (no lifespan entered here).
    strict.state.models = app.state.models
    strict.state.ready = True
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=strict), base_url="http://strict") as client:
        yield client


async def test_prompt_over_the_token_limit_is_refused(strict_client: httpx.AsyncClient) -> None:
    long_prompt = "one two three four five six seven eight nine ten"
    for path in ("/generate", "/next-token-probs"):
        response = await strict_client.post(
            path, json={"prompt": long_prompt, **({"top_k": 3} if "next" in path else {})}
        )
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["param"] == "prompt" and "limit is 8" in error["message"]


async def test_configured_limits_apply(strict_client: httpx.AsyncClient) -> None:
    cases = [
        ("/generate", {"prompt": "Hi", "max_new_tokens": 17}, "max_new_tokens"),
        ("/next-token-probs", {"prompt": "Hi", "top_k": 6}, "top_k"),
        ("/tokenize", {"text": "x" * 201}, "text"),
    ]
    for path, body, param in cases:
        response = await strict_client.post(path, json=body)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["param"] == param
    ok = await strict_client.post("/generate", json={"prompt": "Hi", "max_new_tokens": 16})
    assert ok.status_code == 200


async def test_oversized_body_gets_413_before_parsing(strict_client: httpx.AsyncClient) -> None:
    response = await strict_client.post("/tokenize", json={"text": "x" * 5000})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds while the body streams in
        for _ in range(10):
            yield b"x" * 1000

    response = await strict_client.post("/tokenize", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
