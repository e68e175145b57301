"""Fixtures for the fuzz tests: a second app on the session's loaded models, with limits so small that
every valid request is cheap (a fuzzed generation is at most a few tokens), and its OpenAPI schema."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fuzz_limits import fuzz_settings as _fuzz_settings

from service.app import create_app
from service.config import Settings
from service.state import LoadedModels


@pytest.fixture(scope="session")
def fuzz_settings() -> Settings:
    # mypy does not see fuzz_limits (pytest puts tests/fuzz on sys.path), so say what comes back.
    settings: Settings = _fuzz_settings()
    return settings


@pytest.fixture(scope="session")
def fuzz_app(fuzz_settings: Settings, loaded_models: LoadedModels) -> Iterator[FastAPI]:
    """An app sharing the session's loaded models (never loaded twice) with its own engine.

    Its lifespan runs on schemathesis' in-process ASGI client (its own event-loop thread), started by the
    first request that reaches it and stopped here at the end of the session."""
    models = dataclasses.replace(loaded_models, engine=None, load_seconds=dict(loaded_models.load_seconds))
    application = create_app(fuzz_settings, models=models)
    yield application
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # stops the generation engine thread this app started
