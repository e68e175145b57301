"""Raw-socket helpers: requests exactly as written, answers exactly as sent (loopback only, every wait bounded)."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int | None  # None: the server closed without answering
    headers: dict[str, str]
    body: bytes
    elapsed: float
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse(raw: bytes, elapsed: float) -> Answer:
    if not raw:
        return Answer(None, {}, b"", elapsed, raw)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, body, elapsed, raw)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (or resets) the connection, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout} s; got {b''.join(chunks)[:300]!r}") from None
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(port: int, data: bytes, timeout: float = 10.0) -> Answer:
    """Send `data` at once, then read until the server closes; the caller's request should say `Connection: close`
    or be one the server refuses."""
    started = time.monotonic()
    with connect(port, timeout) as sock:
        sock.sendall(data)
        raw = read_until_closed(sock, timeout)
    return parse(raw, time.monotonic() - started)


def read_one_response(sock: socket.socket, timeout: float = 10.0) -> Answer:
    """One response with a Content-Length body on a connection that stays open."""
    started = time.monotonic()
    deadline = started + timeout
    raw = b""
    while b"\r\n\r\n" not in raw:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    answer = parse(raw, 0.0)
    length = int(answer.headers.get("content-length", "0"))
    while len(answer.body) < length and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
        answer = parse(raw, 0.0)
    answer.elapsed = time.monotonic() - started
    return answer


def assert_error_shape(answer: Answer, status: int) -> dict[str, Any]:
    assert answer.status == status, answer.raw[:500]
    assert answer.headers.get("content-type") == "application/json", answer.headers
    assert answer.headers.get("connection") == "close", answer.headers
    error = answer.json()["error"]
    assert isinstance(error, dict), error
    assert set(error) >= {"message", "type", "param", "code"} and error["code"] == status, error
    return error
