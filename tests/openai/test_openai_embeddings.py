"""`POST /v1/embeddings` through the official `openai` client (async in process, sync over a real socket) and
plain HTTP, in float32: OpenAI's shapes, float and base64 vectors that are the same float32 numbers, the same
text giving the same vector alone or batched, the pooling setting, the tiny GPT-2 and Llama end to end, and
400s naming the field of every bad input."""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi import FastAPI

from service.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "language"))  # the tiny models the language tests build
from tiny_models import save_tiny_gpt2, save_tiny_llama, serve_folder

if TYPE_CHECKING:
    import openai

    from service.language.model import LanguageModel

TEXTS = [
    "The capital of France is Paris.",
    "Paris is the capital of France.",
    "I like to eat apples.",
    "Hello",
]
SAME = 1e-5  # float32: the same input alone or batched


def reference(lm: LanguageModel, ids: list[int], pooling: str = "mean") -> np.ndarray[Any, np.dtype[np.float32]]:
    """transformers' own forward over the input alone: the last hidden state (after the final norm), pooled, unit length."""
    with torch.inference_mode():
        states = lm.module()(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].float()
    pooled = states.mean(dim=0) if pooling == "mean" else states[-1]
    vector: np.ndarray[Any, np.dtype[np.float32]] = F.normalize(pooled, dim=0).numpy()
    return vector


def vectors(body: dict[str, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    rows = [item["embedding"] for item in sorted(body["data"], key=lambda item: item["index"])]
    if rows and isinstance(rows[0], str):
        return np.stack([np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows])
    return np.asarray(rows, dtype=np.float32)


async def embed(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# ---- the openai client ----------------------------------------------------------------------------------


async def test_the_openai_client_gets_unit_vectors_as_floats_and_as_base64(
    aclient: openai.AsyncOpenAI, model_id: str, language_model: LanguageModel
) -> None:
    as_floats = await aclient.embeddings.create(model=model_id, input=TEXTS, encoding_format="float")
    by_default = await aclient.embeddings.create(model=model_id, input=TEXTS)  # the client asks for base64, decodes it
    as_base64 = await aclient.embeddings.create(model=model_id, input=TEXTS, encoding_format="base64")

    assert as_floats.object == "list" and as_floats.model == model_id
    assert [d.index for d in as_floats.data] == list(range(len(TEXTS)))
    assert all(d.object == "embedding" for d in as_floats.data)
    floats = np.asarray([d.embedding for d in as_floats.data], dtype=np.float32)
    assert floats.shape == (len(TEXTS), 576)
    assert np.allclose(np.linalg.norm(floats, axis=1), 1.0, atol=1e-6)
    # base64 carries the very float32 numbers the float list prints
    assert np.array_equal(np.asarray([d.embedding for d in by_default.data], dtype=np.float32), floats)
    encoded = [d.embedding for d in as_base64.data]
    assert all(isinstance(e, str) for e in encoded)
    decoded = np.stack([np.frombuffer(base64.b64decode(str(e)), dtype="<f4") for e in encoded])
    assert np.array_equal(decoded, floats)

    tokens = sum(len(language_model.encode(t)) for t in TEXTS)
    assert as_floats.usage.prompt_tokens == as_floats.usage.total_tokens == tokens
    for row, text in enumerate(TEXTS):
        assert np.abs(floats[row] - reference(language_model, language_model.encode(text))).max() < SAME
    # the two sentences about Paris are closer to each other than to the one about apples
    similarity = floats @ floats.T
    assert similarity[0, 1] > similarity[0, 2] and similarity[0, 1] > similarity[1, 2]


def test_the_sync_client_over_a_real_socket(
    sync_client: openai.OpenAI, model_id: str, language_model: LanguageModel
) -> None:
    answer = sync_client.embeddings.create(model=model_id, input=TEXTS[0], user="someone")
    (item,) = answer.data
    got = np.asarray(item.embedding, dtype=np.float32)
    assert np.abs(got - reference(language_model, language_model.encode(TEXTS[0]))).max() < SAME
    assert answer.usage.prompt_tokens == len(language_model.encode(TEXTS[0]))


# ---- the same vector alone or batched -----------------------------------------------------------------


async def test_a_text_gives_the_same_vector_alone_in_a_batch_or_beside_other_requests(
    client: httpx.AsyncClient,
) -> None:
    batched = vectors(await embed(client, input=TEXTS))
    alone = [vectors(await embed(client, input=text))[0] for text in TEXTS]
    concurrent = await asyncio.gather(*(embed(client, input=[text]) for text in reversed(TEXTS)))
    for row in range(len(TEXTS)):
        assert np.abs(batched[row] - alone[row]).max() < SAME
        assert np.abs(vectors(concurrent[len(TEXTS) - 1 - row])[0] - alone[row]).max() < SAME
    assert not np.allclose(batched[0], batched[1])


async def test_token_ids_give_the_texts_vectors(client: httpx.AsyncClient, language_model: LanguageModel) -> None:
    ids = [language_model.encode(t) for t in TEXTS]
    from_text = vectors(await embed(client, input=TEXTS))
    from_lists = await embed(client, input=ids)
    from_one = await embed(client, input=ids[0])
    assert np.abs(vectors(from_lists) - from_text).max() < SAME
    assert np.abs(vectors(from_one)[0] - from_text[0]).max() < SAME
    assert from_lists["usage"] == {"prompt_tokens": sum(map(len, ids)), "total_tokens": sum(map(len, ids))}


async def test_the_shape_is_openais_and_null_fields_count_as_absent(client: httpx.AsyncClient, model_id: str) -> None:
    body = await embed(client, input="Hello", model=model_id, dimensions=576, user=None, encoding_format=None)
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list" and body["model"] == model_id
    (item,) = body["data"]
    assert set(item) == {"object", "index", "embedding"} and item["object"] == "embedding" and item["index"] == 0
    assert len(item["embedding"]) == 576 and all(isinstance(x, float) for x in item["embedding"])


async def test_last_token_pooling_by_the_setting(
    make_app: Callable[[Settings], Awaitable[FastAPI]], language_model: LanguageModel, client: httpx.AsyncClient
) -> None:
    app = await make_app(Settings(dtype="float32", embedding_pooling="last"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120) as own:
        last = vectors(await embed(own, input=TEXTS))
    mean = vectors(await embed(client, input=TEXTS))
    for row, text in enumerate(TEXTS):
        ids = language_model.encode(text)
        assert np.abs(last[row] - reference(language_model, ids, "last")).max() < SAME
        if len(ids) > 1:
            assert np.abs(last[row] - mean[row]).max() > 1e-2
        else:  # one token ("Hello"): its mean is itself
            assert np.abs(last[row] - mean[row]).max() < SAME


@pytest.mark.parametrize("save", [save_tiny_gpt2, save_tiny_llama], ids=["gpt2-transformers", "llama-lean"])
async def test_tiny_models_embed_over_http(save: Callable[[Path], Path], tmp_path: Path) -> None:
    from service.language.loading import load_language_model

    folder = save(tmp_path / "model")
    lm = load_language_model(str(folder), dtype="float32", cache_dir=tmp_path / "cache")
    async with serve_folder(folder) as tiny:
        forward = (await tiny.get("/info")).json()["engine"]["forward"]
        assert forward == ("lean-llama" if save is save_tiny_llama else "transformers")
        batched = vectors(await embed(tiny, input=TEXTS))
        base64_batched = vectors(await embed(tiny, input=TEXTS, encoding_format="base64"))
    assert batched.shape == (len(TEXTS), lm.model.config.hidden_size)
    assert np.array_equal(batched, base64_batched)
    for row, text in enumerate(TEXTS):
        assert np.abs(batched[row] - reference(lm, lm.encode(text))).max() < SAME


# ---- refusals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ["Hello", "", "world"]}, "input[1]"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [[504], []]}, "input[1]"),
        ({"input": [[504], [504] * 2049, [504]]}, "input[1]"),  # over GENAI_MAX_PROMPT_TOKENS (2048)
        ({"input": [504] * 2049}, "input"),
        ({"input": [[504]] * 2049}, "input"),  # more inputs than one request may give (2048)
        ({"input": [[504] * 2048] * 147}, "input"),  # 301,056 tokens in all, over 300,000
        ({"input": [[504], [999999]]}, "input[1]"),  # outside the vocabulary
        ({"input": [[504], [-1]]}, "input[1]"),
        ({"input": ["Hello", 504]}, "input"),  # a mixed list
        ({"input": "Hello", "dimensions": 64}, "dimensions"),
        ({"input": "Hello", "dimensions": 0}, "dimensions"),
        ({"input": "Hello", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "Hello", "made_up": 1}, "made_up"),
        ({"input": "Hello", "user": 5}, "user"),
        ({}, "input"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(client: httpx.AsyncClient, body: dict[str, Any], param: str) -> None:
    response = await client.post("/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    assert error["param"] == param, error
    assert error["message"]


async def test_an_unknown_model_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/embeddings", json={"input": "Hello", "model": "text-embedding-3-small"})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "model"


async def test_api_keys_guard_it(make_app: Callable[[Settings], Awaitable[FastAPI]]) -> None:
    app = await make_app(Settings(dtype="float32", api_keys=["secret"]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120) as own:
        assert (await own.post("/v1/embeddings", json={"input": "Hello"})).status_code == 401
        allowed = await own.post("/v1/embeddings", json={"input": "Hello"}, headers={"Authorization": "Bearer secret"})
        assert allowed.status_code == 200


async def test_openapi_describes_it(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/v1/embeddings"]["post"]
    assert {"200", "400", "404", "429"} <= set(operation["responses"])
    request = spec["components"]["schemas"]["EmbeddingRequest"]
    assert {"input", "model", "encoding_format", "dimensions", "user"} == set(request["properties"])
