"""Serving the app over real HTTP from the test process: uvicorn in a thread, on the session's models."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from service.state import LoadedModels


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_in_thread(application: FastAPI) -> Iterator[str]:
    """A started app (models and engine running) behind a real uvicorn on a free localhost port, in a
    thread of this process; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(application, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    with _running(uvicorn.Server(config), {}, timeout=30):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def _running(server: uvicorn.Server, run_args: dict[str, object], timeout: float) -> Iterator[None]:
    """`server.run(**run_args)` in a daemon thread until it has started; stopped on the way out."""
    thread = threading.Thread(target=server.run, kwargs=run_args, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the threaded uvicorn did not start")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # uvicorn < 0.29; newer ones skip this off the main thread
        pass


@contextmanager
def serve(settings: Settings, loaded_models: LoadedModels) -> Iterator[str]:
    """Run the real app on 127.0.0.1:<free port> in a thread; yield its base URL.

    The app gets its own `LoadedModels` (same model objects, engine None) so that its lifespan starts and
    stops its own generation engine without touching the engine of the in-process `app` fixture.
    """
    models = dataclasses.replace(loaded_models, engine=None, load_seconds=dict(loaded_models.load_seconds))
    app = create_app(settings, models=models)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    try:
        with _running(_ThreadedServer(config), {"sockets": [sock]}, timeout=60):
            yield f"http://127.0.0.1:{port}"
    finally:
        sock.close()
