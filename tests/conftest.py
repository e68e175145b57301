"""Shared fixtures: the real embedded models, loaded once per test session, and in-process clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI
from servers import free_port, serve_in_thread

from service.app import create_app, load_models
from service.config import Settings
from service.state import LoadedModels

if TYPE_CHECKING:
    from service.language.model import LanguageModel


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The default settings, as `make serve` uses them (environment variables still apply), but in float32
    over the de-quantized weights: the exactness tests hold the service to transformers token for token,
    which only float32 guarantees. tests/language/test_lowbit.py covers the GGUF's own low-bit weights (the
    default on CPUs with native bfloat16), tests/language/test_precision.py dense bfloat16."""
    return Settings(dtype="float32", weights="dense")


@pytest.fixture(scope="session")
def loaded_models(settings: Settings) -> LoadedModels:
    """The embedded models, loaded once for every test that needs them."""
    return load_models(settings)


@pytest.fixture(scope="session")
def language_model(loaded_models: LoadedModels) -> LanguageModel:
    assert loaded_models.language is not None
    return loaded_models.language


@pytest.fixture(scope="session")
async def app(settings: Settings, loaded_models: LoadedModels) -> AsyncIterator[FastAPI]:
    application = create_app(settings, models=loaded_models)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120) as http:
        yield http


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave artefacts (screenshots, logs) for people to look at."""
    path = Path(__file__).resolve().parent.parent / "test-output"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def unused_port() -> int:
    # mypy does not see servers (pytest puts tests/ on sys.path), so say what comes back.
    port: int = free_port()
    return port


@pytest.fixture(scope="session")
def live_server() -> Iterator[str]:
    """The service as `make serve` runs it: a real uvicorn process on a free localhost port."""
    import os
    import tempfile

    port = free_port()
    env = {**os.environ, "GENAI_PORT": str(port), "GENAI_HOST": "127.0.0.1"}
    # to a file, not a pipe nobody reads: a few hundred requests' log lines would fill a pipe and freeze the server
    with tempfile.TemporaryFile(mode="w+") as log:
        yield from _serve_until_done(env, port, log)


def _serve_until_done(env: dict[str, str], port: int, log: Any) -> Iterator[str]:
    """Start the server with its output to `log`, wait for /ready, yield its address, stop it."""
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"server exited early:\n{log.read()}")
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready in 180 s")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def threaded_server(app: FastAPI) -> Iterator[str]:
    """The session's `app` behind a real uvicorn in a thread: for clients that need a socket (the sync
    `openai` client, `tritonclient`)."""
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="session")
async def make_app(loaded_models: LoadedModels) -> AsyncIterator[Callable[[Settings], Awaitable[FastAPI]]]:
    """Build and start another app with other settings (API keys, CORS, logging), reusing the loaded models.

    Each app gets its own copy of the models container, so its lifespan starts (and stops) its own engine
    instead of replacing the session app's. The apps stop at the end of the session."""
    import dataclasses
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:

        async def build(app_settings: Settings) -> FastAPI:
            models = dataclasses.replace(loaded_models, engine=None, load_seconds=dict(loaded_models.load_seconds))
            application = create_app(app_settings, models=models)
            await stack.enter_async_context(application.router.lifespan_context(application))
            return application

        yield build
