"""What an outside hostile-input probe against `make serve` found, each held here so it stays fixed.

A streaming /generate whose client left before the first token ran on to its time limit (80 such
requests filled the whole admission bound); deeply nested JSON gave /classify-digit a 500; a path with
CR/LF forged log lines; `/path/` redirects echoed the Host header. And the shutdown grace: a generation
still running when it ended was cut by uvicorn with a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.observability.logs import TextFormatter


def _engine(app: FastAPI) -> Any:
    return app.state.models.engine


async def _wait_idle(app: FastAPI, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _engine(app).held_count == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_stream_closed_before_its_first_token_is_cancelled(app: FastAPI, threaded_server: str) -> None:
    """The request is sent and the socket closed at once, before the response headers: the generation must
    end `cancelled` within moments, not run 512 tokens for nobody."""
    assert await _wait_idle(app, 60)
    cancelled_before = _engine(app).stats.finished
    tokens_before = _engine(app).stats.generated_tokens  # the engine is shared by the whole session
    host, port = threaded_server.removeprefix("http://").split(":")
    body = json.dumps({"prompt": "x", "max_new_tokens": 512, "ignore_eos": True, "stream": True}).encode()
    for _ in range(3):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
    await asyncio.sleep(0.5)
    assert await _wait_idle(app, 20), _engine(app).describe()  # 512 tokens would take far longer than this
    assert _engine(app).stats.finished - cancelled_before == 3
    assert _engine(app).stats.generated_tokens - tokens_before < 3 * 512


@pytest.mark.parametrize(
    "route", ["/classify-digit", "/generate", "/tokenize", "/v1/completions", "/v2/models/mnist/infer"]
)
async def test_deeply_nested_json_is_a_4xx(client: httpx.AsyncClient, route: str) -> None:
    for depth in (1000, 100_000):
        body = "[" * depth + "]" * depth
        response = await client.post(route, content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (route, depth, response.text[:200])
        assert response.headers["content-type"].startswith("application/json")


async def test_a_number_of_five_thousand_digits_is_a_4xx(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/classify-digit", content='{"pixels": [' + "9" * 5000 + "]}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "body"


def test_control_characters_in_a_logged_path_stay_on_one_line() -> None:
    record = logging.LogRecord(
        "service.access", logging.INFO, __file__, 1, "GET %s 404", ("/nope\r\nFORGED 200\x00",), None
    )
    record.fields = {"path": "/nope\r\nFORGED 200", "status": 404}
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x00" not in line
    assert "\\r\\nFORGED" in line


async def test_no_redirect_echoes_the_host_header(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/", headers={"host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers


async def test_cancel_all_ends_what_is_running_with_its_own_answer(make_app: Any) -> None:
    from service.config import Settings

    application = await make_app(Settings(dtype="float32"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://grace", timeout=60
    ) as http:
        running = asyncio.create_task(
            http.post("/generate", json={"prompt": "x", "max_new_tokens": 400, "ignore_eos": True})
        )
        while _engine(application).running_count == 0:  # noqa: ASYNC110 - the engine's counters have no event to await
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        _engine(application).cancel_all()
        response = await asyncio.wait_for(running, 30)
    assert response.status_code == 200
    body = response.json()
    assert body["finish_reason"] == "cancelled" and 0 < body["usage"]["completion_tokens"] < 400
    assert await _wait_idle(application, 5)
