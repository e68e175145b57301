"""The request time limit under /v1: a generation cut short ends with `length`; one that never got a token is a 504."""

from __future__ import annotations

import asyncio

import httpx

from service.config import Settings

LONG = {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "ignore_eos": True, "timeout_s": 2}


async def test_time_limit(make_app, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    app = await make_app(
        settings.model_copy(update={"max_batch_size": 1, "max_running_requests": 1, "request_timeout_s": 30})
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as client:
        first = asyncio.create_task(client.post("/v1/completions", json=LONG))
        await asyncio.sleep(0.2)  # the first takes the only batch slot; the second waits past its limit
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "timeout_s": 0.5}
        second = await client.post("/v1/chat/completions", json=chat)
        cut = await first
        too_long = await client.post("/v1/completions", json={**LONG, "timeout_s": 31})
    assert cut.status_code == 200
    body = cut.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert 0 < body["usage"]["completion_tokens"] < 400
    assert second.status_code == 504, second.text
    error = second.json()["error"]
    assert error["type"] == "timeout" and "time limit" in error["message"]
    assert second.headers["retry-after"] == "1"
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "timeout_s"


STARVED_STREAMS = [
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 4, "stream": True, "timeout_s": 0.3}),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True, "timeout_s": 0.3},
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "n": 2,
            "stream": True,
            "timeout_s": 0.3,
            "stream_options": {"include_usage": True},
        },
    ),
]


async def test_a_stream_without_a_token_in_time_is_a_504_not_a_200_stream(make_app, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """As the native /generate answers it: the stream waits for its first event before it answers, so a
    time limit that passes in the queue is a JSON 504, not a 200 stream that ends at once with `length`."""
    app = await make_app(
        settings.model_copy(update={"max_batch_size": 1, "max_running_requests": 1, "request_timeout_s": 30})
    )
    engine = app.state.models.engine
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as client:
        occupier = asyncio.create_task(client.post("/v1/completions", json={**LONG, "timeout_s": 4}))
        for _ in range(200):  # the occupier holds the only batch slot before the streams queue behind it
            if engine.running_count:
                break
            await asyncio.sleep(0.05)
        starved = [await client.post(path, json=body) for path, body in STARVED_STREAMS]
        occupied = await occupier
    assert occupied.status_code == 200 and occupied.json()["usage"]["completion_tokens"] > 0
    for (path, _), response in zip(STARVED_STREAMS, starved, strict=True):
        assert response.status_code == 504, (path, response.headers.get("content-type"), response.text[:300])
        assert response.headers["content-type"].startswith("application/json"), path
        error = response.json()["error"]
        assert error["type"] == "timeout" and "time limit" in error["message"] and error["code"] == 504, error
        assert response.headers["retry-after"] == "1"
