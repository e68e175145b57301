"""X-Request-ID on every response, and one structured log line per request (prompt text only when asked)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.config import Settings
from service.observability.logs import JsonFormatter, TextFormatter

PROMPT = "My secret prompt about zebras"


@pytest.fixture(scope="module")
async def prompt_logging_app(make_app: Callable[[Settings], Awaitable[FastAPI]], settings: Settings) -> FastAPI:
    application = await make_app(settings.model_copy(update={"log_prompts": True, "max_body_bytes": 2048}))

    async def boom() -> None:
        raise RuntimeError("kaboom")

    application.add_api_route("/test-only/boom", boom)
    return application


@pytest.fixture(scope="module")
async def prompt_client(prompt_logging_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=prompt_logging_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as http:
        yield http


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "service.access"]


async def test_request_id_generated_echoed_or_replaced(client: httpx.AsyncClient) -> None:
    generated = (await client.get("/health")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert (await client.get("/health")).headers["x-request-id"] != generated
    assert (await client.get("/health", headers={"X-Request-ID": "trace-42.a"})).headers["x-request-id"] == "trace-42.a"
    replaced = (await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)
    assert re.fullmatch(
        r"[0-9a-f]{32}", (await client.get("/health", headers={"X-Request-ID": "x" * 500})).headers["x-request-id"]
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/no/such/route", None, 404),
        ("POST", "/v1/completions", {"prompt": "x", "presence_penalty": 3}, 400),
        ("POST", "/tokenize", {"nope": 1}, 422),
        ("POST", "/v2/models/mnist/infer", {"inputs": []}, 400),
        ("GET", "/metrics", None, 200),
    ],
)
async def test_errors_carry_the_request_id_too(
    client: httpx.AsyncClient, method: str, path: str, body: object, status: int
) -> None:
    response = await client.request(method, path, json=body, headers={"X-Request-ID": "req-err-1"})
    assert response.status_code == status
    assert response.headers["x-request-id"] == "req-err-1"


async def test_stream_carries_the_request_id(client: httpx.AsyncClient) -> None:
    body = {"prompt": "Hi", "max_tokens": 1, "temperature": 0, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body, headers={"X-Request-ID": "stream-1"}) as response:
        assert response.headers["x-request-id"] == "stream-1"
        await response.aread()


async def test_one_log_line_per_request_without_the_prompt(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    response = await client.post(
        "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2, "temperature": 0}, headers={"X-Request-ID": "log-1"}
    )
    assert response.status_code == 200
    records = [r for r in access_records(caplog) if r.fields["request_id"] == "log-1"]  # type: ignore[attr-defined]
    assert len(records) == 1
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields["method"] == "POST" and fields["route"] == "/v1/completions" and fields["status"] == 200
    assert fields["duration_ms"] > 0
    assert fields["prompt_tokens"] == response.json()["usage"]["prompt_tokens"]
    assert fields["completion_tokens"] == 2
    assert "zebras" not in json.dumps(fields) and "zebras" not in records[0].getMessage()


async def test_prompt_logged_only_when_enabled(
    prompt_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1, "temperature": 0, "stream": True}
    async with prompt_client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"X-Request-ID": "log-2"}
    ) as response:
        await response.aread()
    records = [r for r in access_records(caplog) if r.fields["request_id"] == "log-2"]  # type: ignore[attr-defined]
    assert len(records) == 1
    fields = records[0].fields  # type: ignore[attr-defined]
    assert "zebras" in fields["prompt"]
    assert fields["completion_tokens"] == 1 and fields["prompt_tokens"] > 5


async def test_body_limit_and_unexpected_errors_are_logged_with_ids(
    prompt_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    too_large = await prompt_client.post(
        "/tokenize", content=b"x" * 4096, headers={"X-Request-ID": "big-1", "content-type": "application/json"}
    )
    assert too_large.status_code == 413 and too_large.headers["x-request-id"] == "big-1"
    boom = await prompt_client.get("/test-only/boom", headers={"X-Request-ID": "boom-1"})
    assert boom.status_code == 500 and boom.headers["x-request-id"] == "boom-1"
    assert boom.json()["error"]["type"] == "server_error" and "kaboom" not in boom.text
    statuses = {r.fields["request_id"]: r.fields["status"] for r in access_records(caplog)}  # type: ignore[attr-defined]
    assert statuses["big-1"] == 413 and statuses["boom-1"] == 500
    assert (await prompt_client.get("/health")).status_code == 200


def _record(fields: dict[str, Any]) -> logging.LogRecord:
    record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "POST /generate 200 1.0ms", None, None)
    record.fields = fields
    return record


def test_json_formatter_writes_one_object_per_line() -> None:
    line = JsonFormatter().format(
        _record({"request_id": "r1", "status": 200, "route": "/generate", "prompt_tokens": 3})
    )
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "info" and data["logger"] == "service.access" and data["message"].startswith("POST")
    assert data["request_id"] == "r1" and data["status"] == 200 and data["prompt_tokens"] == 3
    assert data["ts"].endswith("Z")


def test_text_formatter_appends_key_values() -> None:
    line = TextFormatter().format(_record({"request_id": "r1", "status": 200, "client": None, "note": "two words"}))
    assert line.endswith('request_id=r1 status=200 note="two words"')
