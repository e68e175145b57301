"""Inspections beside generations over real HTTP (uvicorn): a stream keeps taking decode steps between
inspection pieces, an inspection finishes while a full batch generates, and the inspection queue's bound
holds from idle, mid-prefill and with the batch full, under bursts, leaving clients and odd bytes.

Real sockets because the behaviour depends on them: httpx's in-process transport hands a stream over
only once it has ended, and a client that leaves is a closed connection. Outcomes and order are
asserted, never durations."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from servers import serve_in_thread

from service.config import Settings
from service.inspect import scheduling
from service.inspect.scheduling import Passes

TREE = {"prompt": "Once upon a time", "depth": 3, "branching": 3}  # three pieces: the prompt, two levels
BIG_TREE = {"prompt": "Once upon a time", "depth": 4, "branching": 3}  # 120 nodes, four pieces


@pytest.fixture
async def fair_app(make_app: Callable[[Settings], Awaitable[FastAPI]]) -> FastAPI:
    return await make_app(Settings(dtype="float32", max_batch_size=2, max_running_requests=2, max_waiting_requests=2))


@pytest.fixture
def fair_url(fair_app: FastAPI) -> Iterator[str]:
    with serve_in_thread(fair_app) as url:
        yield url


def record(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The engine thread's order of work: `step` per decode step, `piece` per inspection piece."""
    log: list[str] = []
    engine = app.state.models.engine
    engine.step_listeners.append(lambda rows, seconds: log.append("step"))
    advance = scheduling.advance

    def logged(work: Passes[Any]) -> tuple[bool, Any]:
        log.append("piece")
        return advance(work)

    monkeypatch.setattr(scheduling, "advance", logged)
    return log


async def stream_tokens(
    http: httpx.AsyncClient, tokens: int, first: asyncio.Event, log: list[str], prompt: str = "Write a story:"
) -> int:
    request = {"prompt": prompt, "max_new_tokens": tokens, "ignore_eos": True, "stream": True}
    seen = 0
    async with http.stream("POST", "/generate", json=request) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event: token"):
                seen += 1
                first.set()
            elif line.startswith("event: done"):
                log.append("stream done")
    return seen


def assert_served_or_refused(answers: list[httpx.Response]) -> int:
    """Each answer is the inspection or a 429 that says when to retry and which setting bounds it; the
    number refused."""
    refused = 0
    for answer in answers:
        assert answer.status_code in (200, 429), answer.text
        if answer.status_code == 429:
            refused += 1
            assert int(answer.headers["retry-after"]) >= 1
            assert "GENAI_MAX_WAITING_REQUESTS" in answer.json()["error"]["message"]
        else:
            assert answer.json()["leaves"]
    return refused


async def test_a_stream_takes_a_step_between_any_two_inspection_pieces(
    fair_app: FastAPI, fair_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = record(fair_app, monkeypatch)
    async with httpx.AsyncClient(base_url=fair_url, timeout=300) as http:
        first = asyncio.Event()
        stream = asyncio.create_task(stream_tokens(http, 200, first, log))
        await first.wait()
        trees = [await http.post("/inspect/tree", json=TREE) for _ in range(3)]  # one after another: no 429
        assert [t.status_code for t in trees] == [200] * 3
        assert await stream == 200
    engine_work = [entry for entry in log if entry in ("step", "piece")]
    assert engine_work.count("piece") == 3 * 3
    # while the stream ran, the engine never ran two pieces without a decode step between them
    last_step = max(i for i, entry in enumerate(engine_work) if entry == "step")
    during = engine_work[engine_work.index("step") : last_step + 1]
    assert "piece" in during
    assert all(not (a == b == "piece") for a, b in itertools.pairwise(during)), during


async def test_an_inspection_finishes_while_a_full_batch_generates(
    fair_app: FastAPI, fair_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = record(fair_app, monkeypatch)
    async with httpx.AsyncClient(base_url=fair_url, timeout=300) as http:
        firsts = [asyncio.Event(), asyncio.Event()]
        streams = [asyncio.create_task(stream_tokens(http, 200, first, log)) for first in firsts]
        for first in firsts:
            await first.wait()
        assert fair_app.state.models.engine.running_count == 2  # the batch is full
        answer = await http.post("/inspect/attention", json={"prompt": "The capital of France is"})
        log.append("attention done")
        assert answer.status_code == 200
        assert await asyncio.gather(*streams) == [200, 200]
    assert log.index("attention done") < log.index("stream done")  # it did not wait for the batch to drain


@pytest.mark.parametrize("load", ["idle", "mid-prefill", "full"])
async def test_a_burst_of_inspections_is_served_or_refused_never_failed(
    fair_app: FastAPI, fair_url: str, load: str
) -> None:
    """Twelve at once against a bound of two waiting: each is served or refused with Retry-After; the
    generations running beside them lose no token; afterwards the queue is empty and serves again."""
    async with httpx.AsyncClient(base_url=fair_url, timeout=300) as http:
        streams: list[asyncio.Task[int]] = []
        if load != "idle":
            firsts = [asyncio.Event() for _ in range(1 if load == "mid-prefill" else 2)]
            prompt = "Tell me a story. " * (60 if load == "mid-prefill" else 1)
            streams = [asyncio.create_task(stream_tokens(http, 120, f, [], prompt)) for f in firsts]
            if load == "full":
                for first in firsts:
                    await first.wait()
                assert fair_app.state.models.engine.running_count == 2
        answers = list(await asyncio.gather(*(http.post("/inspect/tree", json=BIG_TREE) for _ in range(12))))
        refused = assert_served_or_refused(answers)
        assert refused >= 1  # one runs, two wait: of twelve sent together some are refused
        assert len(answers) - refused >= 1
        assert await asyncio.gather(*streams) == [120] * len(streams)
        queue = fair_app.state.inspection_queues
        assert all(q.waiting == 0 for q in queue._by_engine[fair_app.state.models.engine].values())
        assert (await http.post("/inspect/tree", json=TREE)).status_code == 200
        assert (await http.get("/health")).status_code == 200
        assert fair_app.state.models.engine.held_count == 0  # every place given back


def raw_request(url: str, path: str, body: bytes) -> socket.socket:
    """A request sent on a raw socket, its answer left unread."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


async def test_a_client_that_leaves_stops_its_inspection_and_frees_the_queue(
    fair_app: FastAPI, fair_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = record(fair_app, monkeypatch)
    leaving = raw_request(fair_url, "/inspect/tree", json.dumps(BIG_TREE).encode())
    for _ in range(3000):
        if "piece" in log:
            break
        await asyncio.sleep(0.01)
    leaving.close()  # gone after the first piece of a many-piece tree
    async with httpx.AsyncClient(base_url=fair_url, timeout=300) as http:
        for _ in range(500):
            if fair_app.state.models.engine.held_count == 0:
                break
            await asyncio.sleep(0.02)
        assert fair_app.state.models.engine.held_count == 0  # its place came back
        dropped_pieces = log.count("piece")
        log.clear()
        whole = await http.post("/inspect/tree", json=BIG_TREE)
        assert whole.status_code == 200
    assert dropped_pieces < log.count("piece")  # the left tree ran fewer pieces than a whole one


async def test_a_slow_reader_of_a_large_answer_does_not_hold_up_others(fair_url: str) -> None:
    body = json.dumps({"prompt": "The quick brown fox jumps over the lazy dog. " * 4}).encode()
    slow = raw_request(fair_url, "/inspect/attention", body)  # every head of every layer: a large answer
    async with httpx.AsyncClient(base_url=fair_url, timeout=60) as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.post("/inspect/tree", json=TREE)).status_code == 200
    received = b""
    slow.settimeout(60)
    while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < 1000:
        chunk = await asyncio.to_thread(slow.recv, 1 << 16)
        assert chunk
        received += chunk
    slow.close()
    assert received.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"prompt": "\xff\xfe", "depth": 2}', None),
        (b'{"prompt": "hi", "depth": 1e309}', "depth"),
        (b'{"prompt": "hi", "branching": -1}', "branching"),
        (b'{"prompt": "hi", "depth": "2; DROP"}', "depth"),
        (b'{"prompt": "hi", "depth": 2', None),
        (b'{"prompt": ["a", 1]}', "prompt"),
    ],
)
async def test_odd_bytes_get_a_4xx_naming_the_field_and_the_service_goes_on(
    fair_url: str, body: bytes, field: str | None
) -> None:
    async with httpx.AsyncClient(base_url=fair_url, timeout=60) as http:
        answer = await http.post("/inspect/tree", content=body, headers={"content-type": "application/json"})
        assert 400 <= answer.status_code < 500, answer.text
        error = answer.json()
        assert "error" in error or "detail" in error
        if field is not None:
            assert field in answer.text
        assert (await http.post("/inspect/tree", json=TREE)).status_code == 200
