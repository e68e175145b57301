"""Fixtures: real servers for the HTTP-layer tests (see http_servers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from http_servers import TIGHT, Server, start_server, stop_server


@pytest.fixture(scope="session")
def guarded_server() -> Iterator[Server]:
    """The service with its default settings and models (the HTTP limits at their defaults)."""
    server = start_server({})
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def tight_server() -> Iterator[Server]:
    """Digits only; head deadline 3 s, body deadline 2 s, at most 30 connections."""
    server = start_server(TIGHT)
    try:
        yield server
    finally:
        stop_server(server)
