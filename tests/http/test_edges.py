"""HEAD on the probes, and request lines and Host headers the server must refuse.

Raw sockets against a real `python -m service serve` (tests/http/conftest.py), so what is tested is the bytes.
"""

from __future__ import annotations

import pytest
from http_servers import Server
from http_wire import assert_error_shape, exchange


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_head_answers_as_get_without_a_body(guarded_server: Server, path: str) -> None:
    get = exchange(
        guarded_server.port, b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path.encode()
    )
    head = exchange(
        guarded_server.port, b"HEAD %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path.encode()
    )
    assert get.status == 200 and get.body
    assert head.status == 200, head.raw[:300]
    assert head.body == b""  # the headers only, nothing after them
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.body))
    assert head.headers["content-type"] == get.headers["content-type"] == "application/json"


def test_head_on_a_kept_alive_connection_leaves_the_next_response_intact(guarded_server: Server) -> None:
    """No stray body bytes after a HEAD answer: the next response on the connection parses."""
    answer = exchange(
        guarded_server.port,
        b"HEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    assert answer.status == 200
    second_head, _, second_body = answer.body.partition(b"\r\n\r\n")
    assert second_head.startswith(b"HTTP/1.1 200 ") and second_body == b'{"status":"ok"}'


def test_an_http09_request_line_is_400(guarded_server: Server) -> None:
    error = assert_error_shape(exchange(guarded_server.port, b"GET /\r\n\r\n"), 400)
    assert "HTTP/0.9" in error["message"] and error["type"] == "invalid_request_error"


def test_an_http11_request_without_host_is_400(guarded_server: Server) -> None:
    error = assert_error_shape(exchange(guarded_server.port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"), 400)
    assert "Host" in error["message"]


def test_an_http10_request_without_host_is_served(guarded_server: Server) -> None:
    answer = exchange(guarded_server.port, b"GET /health HTTP/1.0\r\n\r\n")
    assert answer.status == 200 and answer.json() == {"status": "ok"}


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_a_doubled_host_is_400(guarded_server: Server, version: bytes) -> None:
    request = b"GET /health HTTP/%s\r\nHost: 127.0.0.1\r\nHost: example.test\r\nConnection: close\r\n\r\n" % version
    error = assert_error_shape(exchange(guarded_server.port, request), 400)
    assert "Host" in error["message"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"NOT A REQUEST\r\n\r\n", id="garbage"),
        pytest.param(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n", id="header-without-colon"),
        pytest.param(
            b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="content-length-and-chunked",
        ),
    ],
)
def test_malformed_requests_are_400_in_the_error_shape(guarded_server: Server, request_bytes: bytes) -> None:
    assert_error_shape(exchange(guarded_server.port, request_bytes), 400)


def test_http2_over_an_http1_request_line_is_505_and_other_versions_400(guarded_server: Server) -> None:
    error = assert_error_shape(exchange(guarded_server.port, b"GET /health HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n"), 505)
    assert error["type"] == "http_version_not_supported"
    assert_error_shape(exchange(guarded_server.port, b"GET /health HTTP/1.2\r\nHost: 127.0.0.1\r\n\r\n"), 400)
