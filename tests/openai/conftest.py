"""The official `openai` client pointed at the app: async in process (ASGI transport), sync over a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI

if TYPE_CHECKING:  # the checker sees the installed client; at run time a missing one skips these tests
    import httpx2 as openai_httpx
    import openai

    from service.language.model import LanguageModel
else:
    openai = pytest.importorskip("openai")
    try:  # openai >= 3 is built on httpx2; older releases on httpx
        import httpx2 as openai_httpx
    except ImportError:  # pragma: no cover - depends on the installed openai
        import httpx as openai_httpx


@pytest.fixture(scope="session")
async def aclient(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    http = openai_httpx.AsyncClient(transport=openai_httpx.ASGITransport(app=app), base_url="http://test", timeout=120)
    client = openai.AsyncOpenAI(api_key="unused", base_url="http://test/v1", http_client=http, max_retries=0)
    yield client
    await client.close()


@pytest.fixture(scope="session")
def sync_client(threaded_server: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(api_key="unused", base_url=f"{threaded_server}/v1", max_retries=0, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def model_id(language_model: LanguageModel) -> str:
    return str(language_model.model_id)
