"""Saying no quickly when full, time limits, and a graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.app import begin_draining, create_app
from service.config import Settings
from service.state import LoadedModels

LONG = {"prompt": "Tell me a long story:", "max_new_tokens": 400, "ignore_eos": True}


@asynccontextmanager
async def small_app(loaded_models: LoadedModels, **overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """An app with its own engine (over the session's loaded model) and the given settings."""
    app = create_app(Settings(**overrides), models=loaded_models)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://small", timeout=120) as client,
    ):
        yield client, app


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_full_queue_answers_429_at_once_and_admitted_requests_are_unaffected(loaded_models: LoadedModels) -> None:
    async with small_app(loaded_models, max_batch_size=1, max_running_requests=1, max_waiting_requests=1) as (
        client,
        app,
    ):
        engine = app.state.models.engine
        admitted = asyncio.create_task(client.post("/generate", json={**LONG, "max_new_tokens": 24}))
        await wait_for(lambda: engine.running_count == 1)
        queued = asyncio.create_task(client.post("/generate", json={**LONG, "max_new_tokens": 4}))
        await wait_for(lambda: engine.waiting_count == 1)
        started = time.monotonic()
        refused = await client.post("/generate", json=LONG)
        assert time.monotonic() - started < 1.0
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60  # when the running generation nearest its end is done
        assert refused.json()["error"]["type"] == "overloaded"
        first, second = await admitted, await queued
        assert first.status_code == 200 and first.json()["usage"]["completion_tokens"] == 24
        assert second.status_code == 200 and second.json()["usage"]["completion_tokens"] == 4


async def test_time_limit_ends_a_generation_and_504s_one_that_never_started(loaded_models: LoadedModels) -> None:
    async with small_app(loaded_models, max_batch_size=1, max_running_requests=1) as (client, app):
        engine = app.state.models.engine
        occupier = asyncio.create_task(client.post("/generate", json={**LONG, "max_new_tokens": 60}))
        await wait_for(lambda: engine.running_count == 1)
        starved = await client.post("/generate", json={**LONG, "stream": True, "timeout_s": 0.5})
        assert starved.status_code == 504
        assert starved.json()["error"]["type"] == "timeout"
        assert (await occupier).json()["usage"]["completion_tokens"] == 60  # unaffected
        cut = (await client.post("/generate", json={**LONG, "timeout_s": 2})).json()
        assert cut["finish_reason"] == "time_limit"
        assert 0 < cut["usage"]["completion_tokens"] < LONG["max_new_tokens"]
        too_long = await client.post("/generate", json={**LONG, "timeout_s": 10_000})
        assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "timeout_s"


async def test_draining_turns_unready_and_refuses_new_work_but_finishes_admitted(loaded_models: LoadedModels) -> None:
    async with small_app(loaded_models) as (client, app):
        engine = app.state.models.engine
        admitted = asyncio.create_task(client.post("/generate", json={**LONG, "max_new_tokens": 20}))
        await wait_for(lambda: engine.running_count == 1)
        begin_draining(app)
        assert (await client.get("/ready")).status_code == 503
        refused = await client.post("/generate", json={"prompt": "Hi", "max_new_tokens": 2})
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "model_not_ready"
        assert (await client.get("/health")).status_code == 200
        finished = (await admitted).json()
        assert finished["finish_reason"] == "length" and finished["usage"]["completion_tokens"] == 20


def test_sigterm_finishes_in_flight_stream_and_exits_zero(unused_port: int) -> None:
    port = unused_port
    env = {**os.environ, "GENAI_PORT": str(port), "GENAI_SHUTDOWN_GRACE_S": "60"}
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        request = {"prompt": "Count slowly:", "max_new_tokens": 30, "ignore_eos": True, "stream": True}
        events = []
        with httpx.Client(timeout=120) as http, http.stream("POST", f"{base}/generate", json=request) as response:
            for line in response.iter_lines():
                if line.startswith("event:"):
                    events.append(line[6:].strip())
                    if len(events) == 1:
                        process.send_signal(signal.SIGTERM)  # mid-generation
        assert events.count("token") == 30 and events[-1] == "done"
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{base}/generate", json={"prompt": "Hi"}, timeout=5)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
