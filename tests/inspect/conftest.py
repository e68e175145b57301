"""What the inspection tests share: the tiny models of tests/language served by configuration (the lean
decoder serves the tiny Llama, transformers' forward the tiny GPT-2), and transformers' own forward with
eager attention as the reference every inspection is held to."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "language"))

from inspect_helpers import eager_model
from tiny_models import save_tiny_gpt2, save_tiny_llama, serve_folder

from service.config import Settings
from service.language.loading import resolve_model_source


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(save_tiny_gpt2(tmp_path_factory.mktemp("inspect-tiny-gpt2")))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(save_tiny_llama(tmp_path_factory.mktemp("inspect-tiny-llama")))


@pytest.fixture(scope="session")
async def gpt2_client(tiny_gpt2_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_folder(tiny_gpt2_dir) as client:
        yield client


@pytest.fixture(scope="session")
async def llama_client(tiny_llama_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_folder(tiny_llama_dir) as client:
        yield client


@pytest.fixture(scope="session")
def embedded_dir(settings: Settings) -> Path:
    """The embedded model's converted folder (safetensors), the same weights the service loads."""
    return Path(resolve_model_source("", settings.cache_dir).path_or_id)


@pytest.fixture(scope="session")
def references(embedded_dir: Path, tiny_gpt2_dir: Path, tiny_llama_dir: Path) -> dict[str, Any]:
    """The reference model for each served one, by name: embedded, gpt2, llama."""
    return {
        "embedded": eager_model(embedded_dir),
        "gpt2": eager_model(tiny_gpt2_dir),
        "llama": eager_model(tiny_llama_dir),
    }


@pytest.fixture(scope="session")
async def generic_client(make_app: Callable[[Settings], Awaitable[FastAPI]]) -> AsyncIterator[httpx.AsyncClient]:
    """The embedded model through transformers' own forward (GENAI_LEAN_DECODER=false)."""
    app = await make_app(Settings(dtype="float32", lean_decoder=False))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://generic", timeout=120
    ) as client:
        yield client


@pytest.fixture(scope="session")
async def small_limits_client(make_app: Callable[[Settings], Awaitable[FastAPI]]) -> AsyncIterator[httpx.AsyncClient]:
    """The embedded model with small inspection limits, to see each refused."""
    app = await make_app(
        Settings(
            dtype="float32",
            inspect_max_prompt_tokens=12,
            inspect_max_lens_entries=40,
            inspect_max_attention_weights=100,
            inspect_max_tree_nodes=20,
            inspect_max_tree_depth=4,
            max_top_k=10,
        )
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://small", timeout=120
    ) as client:
        yield client


@pytest.fixture(scope="session")
def served(
    client: httpx.AsyncClient,
    generic_client: httpx.AsyncClient,
    gpt2_client: httpx.AsyncClient,
    llama_client: httpx.AsyncClient,
) -> dict[str, httpx.AsyncClient]:
    """Each way a model is served, by name: the embedded model on the lean decoder (embedded) and on
    transformers' forward (generic), the tiny GPT-2 (transformers' forward), the tiny Llama (lean decoder)."""
    return {"embedded": client, "generic": generic_client, "gpt2": gpt2_client, "llama": llama_client}
