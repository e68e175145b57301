"""The listening socket, bound before anything slow happens, so a taken port is said at once."""

from __future__ import annotations

import errno
import logging
import socket

log = logging.getLogger("service.http")


class ListenError(Exception):
    """The address cannot be bound; the message is one line for the person who started the server."""


def describe_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind (not yet listen: connections are refused until the server starts) as uvicorn itself would."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        address = describe_address(host, port)
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"{address} is already in use (another server is listening there); "
                f"pick another port: `make serve PORT=8123` (or GENAI_PORT=8123, or `--port 8123`)"
            ) from exc
        reason = exc.strerror or str(exc)
        raise ListenError(
            f"cannot listen on {address}: {reason}; pick another address: `make serve HOST=127.0.0.1 PORT=8123` "
            f"(or GENAI_HOST/GENAI_PORT, or `--host`/`--port`)"
        ) from exc
    sock.set_inheritable(True)
    return sock


def ensure_open_files(needed: int) -> int:
    """Raise the soft limit on open files towards `needed` (within the hard limit); return the soft limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
