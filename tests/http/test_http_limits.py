"""Request heads have a size limit and a deadline, bodies a deadline, connections a bound.

Over real HTTP: a `python -m service serve` subprocess (tests/http/conftest.py) and raw sockets.
"""

from __future__ import annotations

import contextlib
import importlib.util
import statistics
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from http_servers import Server
from http_wire import assert_error_shape, connect, exchange, parse, read_one_response, read_until_closed

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def _bench_slow_clients() -> ModuleType:
    """bench/slow_clients.py, whose `trickle_heads` drives the slow connections here and in its benchmark."""
    spec = importlib.util.spec_from_file_location("bench_slow_clients", ROOT / "bench" / "slow_clients.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _poll_health(base: str, stop: threading.Event, latencies: list[float], statuses: list[int], until: float) -> None:
    with httpx.Client(base_url=base, timeout=5) as http:
        while not stop.is_set() and time.monotonic() < until:
            started = time.perf_counter()
            response = http.get("/health")
            latencies.append(time.perf_counter() - started)
            statuses.append(response.status_code)
            time.sleep(0.1)


def test_slow_header_connections_are_closed_by_the_deadline_memory_stays_flat_and_health_is_not_held_up(
    guarded_server: Server,
) -> None:
    """100 connections sending a header byte a second for 20 s (each one closed is reopened): each is closed
    with a 408 at the head deadline (GENAI_HTTP_HEADER_TIMEOUT_S, 10 s by default), the server's VmRSS stays
    within 20 MB of where it started, and every /health probe meanwhile is answered 200 in under a second
    (a server that waited on a slow head would hold it for the deadline). How fast /health stays (the p99
    < 50 ms target) depends on the machine, so it is measured by bench/slow_clients.py, not asserted here."""
    slow_clients = _bench_slow_clients()
    deadline = float(guarded_server.env.get("GENAI_HTTP_HEADER_TIMEOUT_S", 10.0))
    for _ in range(5):  # warm the /health path before the baseline
        httpx.get(f"{guarded_server.base}/health", timeout=5)
    rss_start = guarded_server.rss_kib()
    rss_samples = [rss_start]

    duration, connections = 20.0, 100
    latencies: list[float] = []
    statuses: list[int] = []
    stop = threading.Event()
    poller = threading.Thread(
        target=_poll_health,
        args=(guarded_server.base, stop, latencies, statuses, time.monotonic() + duration + 1),
        daemon=True,
    )
    poller.start()
    try:
        trickled = slow_clients.trickle_heads(
            guarded_server.port, connections, duration, deadline, lambda: rss_samples.append(guarded_server.rss_kib())
        )
    finally:
        stop.set()
        poller.join(timeout=10)
    rss_max = max([*rss_samples, guarded_server.rss_kib()])
    lifetimes: list[float] = trickled.lifetimes

    assert trickled.still_open == 0, (
        f"{trickled.still_open} slow connections still open {deadline + 5:g} s after the last was opened"
    )
    assert len(lifetimes) >= 2 * connections - 5  # two waves: opened at 0 s and when the first wave was closed
    assert max(lifetimes) < deadline + 1.5, f"held for {max(lifetimes):.1f} s (deadline {deadline:g} s)"
    assert min(lifetimes) > deadline - 0.5, f"closed after {min(lifetimes):.1f} s, before the deadline"
    for raw in trickled.answers:
        assert_error_shape(parse(raw, 0.0), 408)
    growth_mb = (rss_max - rss_start) / 1024
    assert growth_mb < 20, f"VmRSS grew by {growth_mb:.1f} MB"
    assert len(latencies) >= 150 and statuses and set(statuses) == {200}
    assert max(latencies) < 1.0, f"a /health probe waited {max(latencies) * 1000:.0f} ms"
    p99_ms = statistics.quantiles(latencies, n=100, method="inclusive")[98] * 1000
    print(
        f"slow connections: {len(lifetimes)} closed after {min(lifetimes):.2f}-{max(lifetimes):.2f} s; "
        f"VmRSS {rss_start / 1024:.1f} -> max {rss_max / 1024:.1f} MB (+{growth_mb:.1f}); "
        f"/health p99 {p99_ms:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 1000) for i in range(70)), id="70-headers-of-1KB"),
        pytest.param(b"X-Big: " + b"b" * (1024 * 1024) + b"\r\n", id="one-1MB-header"),
    ],
)
def test_oversized_headers_get_431_in_the_error_shape(guarded_server: Server, headers: bytes) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n"
    answer = exchange(guarded_server.port, request)
    error = assert_error_shape(answer, 431)
    assert "65536" in error["message"] and error["type"] == "request_header_fields_too_large"


def test_an_oversized_head_pipelined_behind_a_request_in_the_same_write_gets_431(guarded_server: Server) -> None:
    """The head limit also holds for a request that starts inside the read that ended the one before."""
    big = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 1000) for i in range(70))
    answer = exchange(
        guarded_server.port,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + big + b"\r\n",
    )
    assert answer.status == 200 and answer.body.startswith(b'{"status":"ok"}')
    second = parse(answer.body[len(b'{"status":"ok"}') :], 0.0)
    assert_error_shape(second, 431)


def test_headers_just_under_the_limit_are_served(guarded_server: Server) -> None:
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 1000) for i in range(60))  # ~61 KB
    answer = exchange(
        guarded_server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + filler + b"\r\n"
    )
    assert answer.status == 200 and answer.json() == {"status": "ok"}


def test_unterminated_30MB_header_blocks_do_not_grow_memory(guarded_server: Server) -> None:
    """Five connections each pushing a 30 MB header block that never ends: each is refused (431) after the
    limit, and the server's memory does not grow by what they send."""
    rss_start = guarded_server.rss_kib()
    block = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: " + b"x" * (30 * 1024 * 1024)
    results: list[bytes] = []

    def flood() -> None:
        with connect(guarded_server.port, timeout=15) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
                sock.sendall(block)
            try:
                results.append(read_until_closed(sock, timeout=15))
            except (ConnectionResetError, AssertionError):
                results.append(b"")

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(5)]
    for thread in threads:
        thread.start()
    rss_max = rss_start
    give_up = time.monotonic() + 60
    while any(thread.is_alive() for thread in threads) and time.monotonic() < give_up:
        rss_max = max(rss_max, guarded_server.rss_kib())
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=30)
    rss_max = max(rss_max, guarded_server.rss_kib())
    assert len(results) == 5
    answered = [raw for raw in results if raw]
    for raw in answered:  # a client still sending when the linger ends may see a reset instead
        assert_error_shape(parse(raw, 0.0), 431)
    assert answered, "no flood connection read its 431"
    assert (rss_max - rss_start) / 1024 < 20, f"VmRSS grew by {(rss_max - rss_start) / 1024:.1f} MB"
    assert httpx.get(f"{guarded_server.base}/health", timeout=5).status_code == 200


def test_headers_sent_slowly_but_complete_in_time_are_served(tight_server: Server) -> None:
    """The deadline bounds the whole head, not each byte: a head trickled in over 2 s (deadline 3 s) is served."""
    request = HEALTH
    pieces = [request[i : i + 8] for i in range(0, len(request), 8)]
    started = time.monotonic()
    with connect(tight_server.port) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(2.0 / len(pieces))
        answer = parse(read_until_closed(sock), time.monotonic() - started)
    assert answer.status == 200 and answer.json() == {"status": "ok"}
    assert 1.8 < answer.elapsed < 3.0


def test_headers_not_complete_by_the_deadline_get_408(tight_server: Server) -> None:
    with connect(tight_server.port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: the head never ends
        answer = parse(read_until_closed(sock, timeout=10), time.monotonic() - started)
    error = assert_error_shape(answer, 408)
    assert error["type"] == "request_timeout"
    assert 2.8 < answer.elapsed < 4.0


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(tight_server: Server) -> None:
    with connect(tight_server.port) as sock:
        started = time.monotonic()
        raw = read_until_closed(sock, timeout=10)
        elapsed = time.monotonic() - started
    assert raw == b"" and 2.8 < elapsed < 4.0


def test_a_later_request_on_a_kept_alive_connection_has_its_own_head_deadline(tight_server: Server) -> None:
    with connect(tight_server.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = read_one_response(sock)
        assert first.status == 200 and first.json() == {"status": "ok"}
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")  # then nothing
        answer = parse(read_until_closed(sock, timeout=10), time.monotonic() - started)
    assert_error_shape(answer, 408)
    assert 2.8 < answer.elapsed < 4.0


def test_a_body_shorter_than_its_content_length_gets_408_at_the_body_deadline(tight_server: Server) -> None:
    with connect(tight_server.port) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /classify-digit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"pixels": ['
        )
        answer = parse(read_until_closed(sock, timeout=10), time.monotonic() - started)
    error = assert_error_shape(answer, 408)
    assert "body" in error["message"]
    assert 1.8 < answer.elapsed < 3.0
    assert httpx.get(f"{tight_server.base}/health", timeout=5).status_code == 200


def test_a_body_in_time_is_served(tight_server: Server) -> None:
    pixels = [[255 if 8 <= col <= 11 and 4 <= row <= 23 else 0 for col in range(28)] for row in range(28)]  # a "1"
    body = b'{"pixels": ' + str(pixels).encode() + b"}"
    with connect(tight_server.port) as sock:
        sock.sendall(
            b"POST /classify-digit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for i in range(0, len(body), len(body) // 4 + 1):  # in four parts over about a second
            sock.sendall(body[i : i + len(body) // 4 + 1])
            time.sleep(0.3)
        answer = parse(read_until_closed(sock), 0.0)
    assert answer.status == 200, answer.raw[:300]
    assert "digit" in answer.json()


def test_open_connections_are_bounded(tight_server: Server) -> None:
    """GENAI_HTTP_MAX_CONNECTIONS=30: thirty open connections are held; the next ones get 503 with Retry-After
    and are closed; once the thirty go, new connections are served again."""
    time.sleep(0.5)  # connections of earlier tests are gone
    held = [connect(tight_server.port) for _ in range(30)]
    try:
        time.sleep(0.3)
        for sock in held:  # none of the thirty was refused
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        refused = [exchange(tight_server.port, HEALTH, timeout=5) for _ in range(5)]
        for answer in refused:
            error = assert_error_shape(answer, 503)
            assert answer.headers.get("retry-after") == "1" and error["type"] == "overloaded"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    served = exchange(tight_server.port, HEALTH)
    assert served.status == 200 and served.json() == {"status": "ok"}
