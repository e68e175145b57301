"""uvicorn, with a graceful shutdown that load balancers can follow."""

from __future__ import annotations

import logging
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.app import begin_draining


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, turn unready and stop admitting before uvicorn closes the listener and waits
    (up to GENAI_SHUTDOWN_GRACE_S) for the requests in flight; then the lifespan cancels what is left."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and sockets:
            # uvicorn says where it listens only for sockets it binds itself; the CLI binds its own (early).
            for sock in sockets:
                host, port = sock.getsockname()[:2]
                address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s (Press CTRL+C to quit)", address)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            begin_draining(self._app)
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after its shutdown, so the process would die by SIGTERM;
        # a drained shutdown is a clean exit (status 0) for supervisors and orchestrators.
        self._captured_signals.clear()
