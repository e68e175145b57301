"""The admission bound: at most GENAI_MAX_BATCH_SIZE + GENAI_MAX_WAITING_REQUESTS requests are held at
any instant, whatever the route (/generate, /v1/*, /next-token-probs), and every request beyond them is
refused at once with 429 and a Retry-After from the engine's state.

Over real HTTP (uvicorn in a thread, one connection per request), with bursts of 300 from idle, while a
long prompt is being prefilled, and while the bound is already full. Before the fix, a burst from idle was
queued without bound (the refusal needed the batch to be full too, and the batch fills at step boundaries).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from servers import serve_in_thread

from service.config import Settings
from service.language.admission import estimate_retry_after

MAX_BATCH, MAX_WAITING = 4, 8
BOUND = MAX_BATCH + MAX_WAITING
GENERATE = {"prompt": "Once upon a time", "max_new_tokens": 24, "ignore_eos": True}


@pytest.fixture(scope="module")
async def bounded_app(make_app: Callable[[Settings], Awaitable[FastAPI]]) -> FastAPI:
    return await make_app(
        Settings(
            dtype="float32", max_batch_size=MAX_BATCH, max_running_requests=MAX_BATCH, max_waiting_requests=MAX_WAITING
        )
    )


@pytest.fixture(scope="module")
def bounded_url(bounded_app: FastAPI) -> Iterator[str]:
    with serve_in_thread(bounded_app) as url:
        yield url


@pytest.fixture
async def http(bounded_url: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=bounded_url, timeout=300, limits=limits) as client:
        yield client


def _engine(app: FastAPI) -> Any:
    return app.state.models.engine


async def _timed(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> tuple[int, float, httpx.Headers, dict[str, Any]]:
    started = time.perf_counter()
    response = await client.post(path, json=body)
    return response.status_code, time.perf_counter() - started, response.headers, response.json()


async def _burst(
    client: httpx.AsyncClient, requests: list[tuple[str, dict[str, Any]]]
) -> list[tuple[int, float, httpx.Headers, dict[str, Any]]]:
    return await asyncio.gather(*(_timed(client, path, body) for path, body in requests))


async def _idle(app: FastAPI) -> None:
    deadline = time.monotonic() + 60
    while _engine(app).held_count:
        assert time.monotonic() < deadline, "the engine did not drain"
        await asyncio.sleep(0.05)


def _check(
    results: list[tuple[int, float, httpx.Headers, dict[str, Any]]], app: FastAPI
) -> tuple[list[float], list[float]]:
    statuses = [status for status, *_ in results]
    assert set(statuses) <= {200, 429}, sorted(set(statuses))  # no 5xx, no 504: nothing waited past its time
    refused = [(elapsed, headers, body) for status, elapsed, headers, body in results if status == 429]
    for _, headers, body in refused:
        assert 1 <= int(headers["retry-after"]) <= 60
        assert body["error"]["type"] == "overloaded" and f"limit {BOUND}" in body["error"]["message"]
    assert _engine(app).stats.peak_held <= BOUND
    return [e for e, *_ in refused], [e for s, e, *_ in results if s == 200]


async def test_a_burst_from_idle_holds_the_bound(http: httpx.AsyncClient, bounded_app: FastAPI) -> None:
    await _idle(bounded_app)
    _engine(bounded_app).stats.peak_held = 0
    results = await _burst(http, [("/generate", GENERATE)] * 300)
    refusals, served = _check(results, bounded_app)
    assert _engine(bounded_app).stats.peak_held == BOUND  # the bound was reached, and never passed
    assert len(refusals) >= 300 - BOUND * 4  # only a few places could free up while the burst arrived
    # refusals do not wait behind the generations: every one came back before most admitted ones ended
    assert max(refusals) < statistics.median(served), (max(refusals), statistics.median(served))


async def test_a_burst_during_a_long_prefill_holds_the_bound(http: httpx.AsyncClient, bounded_app: FastAPI) -> None:
    await _idle(bounded_app)
    _engine(bounded_app).stats.peak_held = 0
    long_prompt = asyncio.create_task(_timed(http, "/generate", {"prompt": "word " * 1500, "max_new_tokens": 1}))
    await asyncio.sleep(0.05)  # the engine is prefilling 1,500 tokens now
    results = await _burst(http, [("/generate", GENERATE)] * 300)
    results.append(await long_prompt)
    refusals, served = _check(results, bounded_app)
    assert len(refusals) >= 300 - BOUND * 4
    assert max(refusals) < statistics.median(served)


async def test_a_burst_on_a_full_bound_is_refused_on_every_route(http: httpx.AsyncClient, bounded_app: FastAPI) -> None:
    await _idle(bounded_app)
    _engine(bounded_app).stats.peak_held = 0
    long = {"prompt": "Once upon a time", "max_new_tokens": 40, "ignore_eos": True}
    filling = [asyncio.create_task(_timed(http, "/generate", long)) for _ in range(BOUND)]
    deadline = time.monotonic() + 30
    while _engine(bounded_app).held_count < BOUND:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    mixed = (
        [("/generate", GENERATE)] * 100
        + [("/v1/completions", {"prompt": "Hi", "max_tokens": 4, "temperature": 0})] * 50
        + [("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})] * 50
        + [("/next-token-probs", {"prompt": "The capital of France is"})] * 100
    )
    results = await _burst(http, mixed)
    refused_while_full = sum(1 for status, *_ in results if status == 429)
    results += await asyncio.gather(*filling)
    refusals, served = _check(results, bounded_app)
    assert refused_while_full >= 290  # the first of the 40-token generations ends seconds later
    assert max(refusals) < statistics.median(served)
    await _idle(bounded_app)  # every place was given back
    assert _engine(bounded_app).held_count == 0


async def test_cancelled_and_finished_requests_give_their_place_back(
    http: httpx.AsyncClient, bounded_app: FastAPI
) -> None:
    """A client that leaves mid-generation and one that is served both free their place: after many of each the engine holds nothing."""
    await _idle(bounded_app)
    for _ in range(3):
        tasks = [
            asyncio.create_task(http.post("/generate", json={**GENERATE, "max_new_tokens": 64})) for _ in range(BOUND)
        ]
        await asyncio.sleep(0.3)
        for task in tasks[: BOUND // 2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await _idle(bounded_app)
    response = await http.post("/generate", json=GENERATE)
    assert response.status_code == 200


def test_retry_after_is_when_the_nearest_generation_ends() -> None:
    assert estimate_retry_after([40, 3, 100], step_seconds=0.5) == 2  # 3 tokens at 0.5 s: 1.5 s, rounded up
    assert estimate_retry_after([400], step_seconds=0.5) == 60  # capped
    assert estimate_retry_after([], step_seconds=0.02) == 1  # nothing running: one step, at least a second
    assert estimate_retry_after([10], step_seconds=0.4) > estimate_retry_after([2], step_seconds=0.4)
