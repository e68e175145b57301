"""uvicorn, with a graceful shutdown that load balancers can follow."""

from __future__ import annotations

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

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            begin_draining(self._app)
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after its shutdown, so the process would die by SIGTERM;
        # a drained shutdown is a clean exit (status 0) for supervisors and orchestrators.
        self._captured_signals.clear()
