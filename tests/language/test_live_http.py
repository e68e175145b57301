"""Over real HTTP against a uvicorn process: the served API, streaming, and cancellation on disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import httpx


def running(base: str) -> int:
    return int(httpx.get(f"{base}/info", timeout=5).json()["engine"]["running"])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_real_http_round_trip(live_server: str) -> None:
    body = httpx.post(
        f"{live_server}/next-token-probs", json={"prompt": "The capital of France is", "top_k": 3}, timeout=30
    ).json()
    assert body["candidates"][0]["token"] == " Paris"
    generated = httpx.post(
        f"{live_server}/generate", json={"prompt": "The capital of France is", "max_new_tokens": 4}, timeout=60
    ).json()
    assert generated["text"].startswith(" Paris")


def test_streaming_client_that_disconnects_leaves_the_batch(live_server: str) -> None:
    request = {"prompt": "Write a long story:", "max_new_tokens": 500, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as http, http.stream("POST", f"{live_server}/generate", json=request) as response:
        lines = response.iter_lines()
        assert any(line.startswith("event: token") for line in lines)  # the first token arrived
        assert running(live_server) == 1
        # leaving the block closes the connection mid-generation
    assert wait_until(lambda: running(live_server) == 0), "the cancelled stream still occupies the batch"


def test_non_streaming_client_that_disconnects_leaves_the_batch(live_server: str) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            task = asyncio.create_task(
                http.post(
                    f"{live_server}/generate",
                    json={"prompt": "Count to a thousand:", "max_new_tokens": 500, "ignore_eos": True},
                )
            )
            assert await asyncio.to_thread(wait_until, lambda: running(live_server) == 1)
            task.cancel()  # the client gives up and closes its connection
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert wait_until(lambda: running(live_server) == 0), "the abandoned request still occupies the batch"
    # and the service goes on serving
    assert (
        httpx.post(f"{live_server}/generate", json={"prompt": "Hi", "max_new_tokens": 2}, timeout=60).status_code == 200
    )
