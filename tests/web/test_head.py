"""`HEAD` on the pages answers as `GET` without a body, over real HTTP (uptime checkers use HEAD)."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import pytest

PATHS = ["/", "/static/app.js", "/docs", "/redoc", "/docs/oauth2-redirect", "/docs/assets/swagger-ui.css"]


def _raw_head(base: str, path: str) -> bytes:
    """Everything the server sends for one HEAD request on a connection it closes afterwards."""
    parts = urlsplit(base)
    assert parts.hostname == "127.0.0.1"
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("path", PATHS)
def test_head_answers_as_get_without_a_body(live_server: str, path: str) -> None:
    with httpx.Client(base_url=live_server, timeout=30) as http:
        got = http.get(path)
        head = http.head(path)
    assert got.status_code == 200
    assert head.status_code == 200, head.text
    assert head.headers["content-type"] == got.headers["content-type"]
    if "content-length" in got.headers:  # a page built per request (the docs' HTML) has one too
        assert int(head.headers["content-length"]) == len(got.content)
    for header in ("content-security-policy", "cache-control", "etag"):
        assert head.headers.get(header) == got.headers.get(header), header

    raw = _raw_head(live_server, path)
    head_block, _, after = raw.partition(b"\r\n\r\n")
    assert head_block.startswith(b"HTTP/1.1 200 "), head_block[:80]
    assert after == b"", f"HEAD {path} sent {len(after)} body bytes"


def test_head_of_a_missing_file_is_a_404(live_server: str) -> None:
    with httpx.Client(base_url=live_server, timeout=30) as http:
        assert http.head("/static/nope.js").status_code == 404
        assert http.head("/docs/assets/nope.js").status_code == 404
