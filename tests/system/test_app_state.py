"""The app's state is one typed `AppState`: made by create_app, filled by the lifespan, read through deps."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.app_state import AppState, state_of
from service.config import Settings
from service.digits.model import DEFAULT_MODEL_PATH, DigitClassifier


def _digits_only() -> Settings:
    return Settings(load_language_model=False, api_keys=[], digits_model_path=DEFAULT_MODEL_PATH)


async def test_lifespan_fills_the_state_and_readiness_follows_it() -> None:
    app = create_app(_digits_only())
    state = state_of(app)
    assert isinstance(app.state, AppState) and not state.ready and state.models.digits is None
    async with app.router.lifespan_context(app):
        assert state.ready and isinstance(state.models.digits, DigitClassifier)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            assert (await client.get("/ready")).status_code == 200
            assert (await client.get("/v2/health/ready")).json() == {"ready": True}
            state.ready = False  # what draining does: every readiness route reads the same flag
            assert (await client.get("/ready")).status_code == 503
            assert (await client.get("/v2/health/ready")).status_code == 503
            assert "genai_ready 0.0" in (await client.get("/metrics")).text
            state.ready = True
    assert not state.ready


def test_a_misspelt_attribute_fails_instead_of_adding_one() -> None:
    state = state_of(create_app(_digits_only()))
    with pytest.raises(AttributeError):
        state.redy = True  # type: ignore[attr-defined]


def test_an_app_not_built_by_create_app_is_refused_plainly() -> None:
    with pytest.raises(TypeError, match="not AppState"):
        state_of(FastAPI())
