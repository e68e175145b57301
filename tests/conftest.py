"""Shared fixtures: the real embedded models, loaded once per test session, and in-process clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app, load_models
from service.config import Settings
from service.state import LoadedModels


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The default settings, as `make serve` uses them (environment variables still apply)."""
    return Settings()


@pytest.fixture(scope="session")
def loaded_models(settings: Settings) -> LoadedModels:
    """The embedded models, loaded once for every test that needs them."""
    return load_models(settings)


@pytest.fixture(scope="session")
def language_model(loaded_models: LoadedModels):  # type: ignore[no-untyped-def]
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
