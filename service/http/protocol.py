"""uvicorn's httptools protocol with the limits a server facing the network needs.

uvicorn's own protocols accept request heads of any size (httptools has no limit; a 30 MB header
block is buffered whole), wait forever for headers or a body that never finish, and hold any number of
connections. This subclass keeps httptools' parser and uvicorn's request cycle (measured: the same
W2/W4 figures, see bench/RESULTS.md) and adds, per connection:

- a head limit: the request line and header fields together larger than `max_header_bytes` get 431;
  bytes of an unfinished head are counted as they arrive, so memory stays bounded (the limit plus one
  read) while a client trickles or floods;
- a head deadline: the request line and headers must be complete within `header_timeout_s` of the
  connection opening (for the first request) or of the first byte of a later one; else 408 (a
  connection that sent nothing at all is closed silently);
- a body deadline: the body must be complete within `body_timeout_s` of the request being handed to
  the app; else 408 while no response has started, or the connection is closed. Both deadlines are
  checked every SWEEP_S seconds by one timer per server, so they end up to that much late; a request
  costs two stores, not two timers;
- a connection bound: past `max_connections` open connections, a new one gets 503 with Retry-After;
- strict request lines: an HTTP/0.9 request, an HTTP/1.1 request without Host, a request with more than
  one Host, and a head the parser rejects are 400 (other versions than 1.0/1.1: 505).

Every such answer has the service's JSON error body and `Connection: close`. After it the connection
is half-closed (FIN after the answer) and what the client still sends is read and dropped for at most
`LINGER_S`, so that the client reads the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from service.errors import error_body

log = logging.getLogger("service.http")

# Seconds a refused connection is kept half-closed, reading and dropping input, before it is closed.
LINGER_S = 1.0
# Refused connections lingering at once; past this a refused connection is closed at once.
MAX_LINGERING = 256
# How often the deadlines of a server's connections are checked: one timer per server, rather than
# two timers (armed and cancelled) per request.
SWEEP_S = 0.25

_NONE, _HEAD, _BODY = 0, 1, 2


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: Any) -> HttpLimits:
        return cls(
            max_header_bytes=settings.http_max_header_bytes,
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            max_connections=settings.http_max_connections,
        )


class _Refuse(Exception):
    """Raised from a parser callback to stop parsing; data_received answers with `self._refusal`."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. `guarded_protocol(limits)` makes the class uvicorn is given (`http=`)."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    lingering: ClassVar[int] = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # the next bytes belong to a request head (or what is read is one)
        self._head_raw = 0  # bytes read while a head was unfinished (bounds what the parser buffers)
        self._mid_read = False  # a request began inside a read that the previous one ended in (uncounted)
        self._got_bytes = False  # anything received on this connection
        self._phase = _NONE  # what the deadline is for: a head, a body, or nothing (idle or being answered)
        self._deadline = 0.0  # loop time by which the phase must be over
        self._body_cycle: RequestResponseCycle | None = None
        self._refusal: tuple[int, str, str] | None = None
        self._finished = False  # refused: input is dropped until the connection closes
        self._pending_refusal: tuple[int, str, str] | None = None  # to send once the requests before it are answered

    # --- connection ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)  # refused ones linger briefly and hold no slot
            _log_refusal(503, "-", f"{len(self.connections)} connections open (GENAI_HTTP_MAX_CONNECTIONS)")
            self._answer_and_close(
                503, "too many open connections; retry shortly", "overloaded", extra_headers=b"retry-after: 1\r\n"
            )
            return
        self._phase, self._deadline = _HEAD, self.loop.time() + self.limits.header_timeout_s
        _ensure_sweep(self.loop, self.server_state)

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _NONE
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._phase = _NONE
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        if self._finished:
            return  # refused: drop what the client still sends until it closes or the linger ends
        self._unset_keepalive_if_required()
        self._got_bytes = True
        self._mid_read = False
        if self._in_head:
            self._head_raw += len(data)
            if self._phase == _NONE:  # the first bytes of a later request on a kept-alive connection
                self._phase, self._deadline = _HEAD, self.loop.time() + self.limits.header_timeout_s
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            status, message, error_type = self._refusal or (
                400,
                f"malformed HTTP request: {exc}",
                "invalid_request_error",
            )
            self._refuse(status, message, error_type)
            return
        if self._in_head and self._head_raw > self.limits.max_header_bytes:
            self._refuse(431, self._too_large_message(), "request_header_fields_too_large")

    def send_400_response(self, msg: str) -> None:  # uvicorn calls it for parser errors elsewhere
        self._refuse(400, f"malformed HTTP request: {msg}", "invalid_request_error")

    # --- parser callbacks ----------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._in_head = False
        self._phase = _NONE
        # The bytes read while this head was awaited bound its size from above, unless it began inside
        # the read that ended the previous request (pipelining): then, or when that bound is over the
        # limit (a body read with the head counts too), the head itself is measured.
        if (
            self._mid_read or self._head_raw > self.limits.max_header_bytes
        ) and self._head_size() > self.limits.max_header_bytes:
            self._refusal = (431, self._too_large_message(), "request_header_fields_too_large")
            raise _Refuse
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            if version == "0.9":
                self._refusal = (
                    400,
                    "HTTP/0.9 requests are not served: send HTTP/1.1 with a Host header",
                    "invalid_request_error",
                )
            else:
                self._refusal = (505, f"HTTP/{version} is not supported: send HTTP/1.1", "http_version_not_supported")
            raise _Refuse
        hosts = 0
        for name, _ in self.headers:
            if name == b"host":
                hosts += 1
        if hosts > 1:
            self._refusal = (400, "more than one Host header", "invalid_request_error")
            raise _Refuse
        if hosts == 0 and version == "1.1":
            self._refusal = (400, "missing Host header (HTTP/1.1 requires one)", "invalid_request_error")
            raise _Refuse
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_raw = 0
        self._mid_read = True  # until the next read starts: what follows in this one is not counted
        if self._phase == _BODY:
            self._phase = _NONE
            self._body_cycle = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if (
            self._pending_refusal is not None
            and not self.pipeline
            and (self.cycle is None or self.cycle.response_complete)
        ):
            status, message, error_type = self._pending_refusal
            self._pending_refusal = None
            self._finished = False
            if not self.transport.is_closing():
                self._refuse(status, message, error_type)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        super()._start_asgi_task(cycle, app)
        if cycle.more_body:  # the body is still to come: it has its deadline from now
            self._phase, self._deadline = _BODY, self.loop.time() + self.limits.body_timeout_s
            self._body_cycle = cycle

    def _head_size(self) -> int:
        """The request target and header fields of the current head, as parsed (with `: ` and CRLFs)."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    # --- deadlines -----------------------------------------------------------------------------
    def _deadline_passed(self) -> None:
        """Called by the sweep once `self._deadline` is past while a head or a body is awaited."""
        phase, self._phase = self._phase, _NONE
        if self.transport.is_closing() or self._finished:
            return
        if phase == _HEAD:
            if not self._got_bytes:  # opened and never used (browsers pre-connect): just close
                self._finished = True
                self.transport.close()
                return
            self._refuse(
                408, f"request headers not received within {self.limits.header_timeout_s:g} s", "request_timeout"
            )
        elif phase == _BODY:
            cycle, self._body_cycle = self._body_cycle, None
            if cycle is not self.cycle or cycle is None or not cycle.more_body:
                return
            self._refuse(
                408,
                f"request body not received within {self.limits.body_timeout_s:g} s",
                "request_timeout",
                current=True,
            )

    # --- refusing ------------------------------------------------------------------------------
    def _too_large_message(self) -> str:
        return f"request headers larger than {self.limits.max_header_bytes} bytes (GENAI_HTTP_MAX_HEADER_BYTES)"

    def _refuse(self, status: int, message: str, error_type: str, *, current: bool = False) -> None:
        """Answer `status` and close. `current`: the refusal is about `self.cycle` itself (its body did not
        come); else it is about a new request's head, and requests before it (pipelined) are answered first."""
        if self._finished:
            return
        self._refusal = None
        cycle = self.cycle
        if not current and cycle is not None and not cycle.response_complete:
            self._pending_refusal = (status, message, error_type)  # sent by on_response_complete
            self._finished = True  # what else the client sends is dropped
            self._phase = _NONE
            return
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self._finished = True
            self._phase = _NONE
            self.transport.close()
            return
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app, if it runs, reads a disconnect and its answer is dropped
            cycle.message_event.set()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        _log_refusal(status, client, message)
        self._answer_and_close(status, message, error_type)

    def _answer_and_close(self, status: int, message: str, error_type: str, extra_headers: bytes = b"") -> None:
        self._finished = True
        self._phase = _NONE
        body = json.dumps(error_body(message, error_type=error_type, code=status), separators=(",", ":")).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body))
        head.extend([extra_headers, b"\r\n", body])
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(b"".join(head))
        cls = type(self)
        if cls.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()  # FIN after the answer; the client's own FIN then closes (eof_received)
        except (OSError, RuntimeError):
            transport.close()
            return
        cls.lingering += 1
        if self.flow is not None:
            self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self._end_linger)

    def _end_linger(self) -> None:
        type(self).lingering -= 1
        if not self.transport.is_closing():
            self.transport.close()


_last_logged: dict[int, list[float]] = {}  # status -> [time of the last line, refusals not logged since]


def _log_refusal(status: int, client: str, reason: str) -> None:
    """One line per refusal, but at most one a second per status under a flood (with the count left out)."""
    now = time.monotonic()
    entry = _last_logged.setdefault(status, [0.0, 0])
    if now - entry[0] < 1.0:
        entry[1] += 1
        return
    skipped, entry[0], entry[1] = entry[1], now, 0
    more = f" (and {int(skipped)} more refused with {status} since the last such line, not logged)" if skipped else ""
    log.warning("http refused status=%d client=%s reason=%r%s", status, client, reason, more)


def _ensure_sweep(loop: asyncio.AbstractEventLoop, state: Any) -> None:
    """One repeating check per server of its connections' deadlines, while it has connections."""
    if getattr(state, "_genai_sweeping", False):
        return
    state._genai_sweeping = True
    loop.call_later(SWEEP_S, _sweep, loop, state)


def _sweep(loop: asyncio.AbstractEventLoop, state: Any) -> None:
    now = loop.time()
    for connection in list(state.connections):
        if getattr(connection, "_phase", _NONE) != _NONE and now >= connection._deadline:
            try:
                connection._deadline_passed()
            except Exception:  # one connection's failure must not stop the checks of the others
                log.exception("deadline check failed")
    if state.connections:
        loop.call_later(SWEEP_S, _sweep, loop, state)
    else:
        state._genai_sweeping = False


def guarded_protocol(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with these limits."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits, "__module__": __name__})
