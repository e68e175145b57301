"""The request time limit under /v1: a generation cut short ends with `length`; one that never got a token is a 504."""

from __future__ import annotations

import asyncio

import httpx

from service.config import Settings

LONG = {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "ignore_eos": True, "timeout_s": 2}


async def test_time_limit(make_app, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    app = await make_app(settings.model_copy(update={"max_batch_size": 1, "max_running_requests": 1, "request_timeout_s": 30}))
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
