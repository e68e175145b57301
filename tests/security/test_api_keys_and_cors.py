"""API keys on model routes only (constant-time check), and CORS from settings: on an app with keys and origins set."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from fastapi import FastAPI

from service.config import Settings
from service.security import key_matches

KEYS = ["key-one", "key-two"]
ALLOWED_ORIGIN = "http://allowed.example"

# Routes that stay open for probes, scrapers and browsers (everything else in the OpenAPI schema needs a key).
OPEN = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/info"),
    ("GET", "/metrics"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/{model_name}/ready"),
    ("GET", "/v2/models/{model_name}/versions/{model_version}/ready"),
}
PATH_VALUES = {"model_name": "mnist", "model_version": "1", "model_id": "x"}
PIXELS = [0] * 783 + [255]  # one ink pixel: all-equal pixels are blank (422)
OIP_BODY = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": PIXELS}]}
# One valid request per model route: with a key they must succeed.
MODEL_ROUTES = [
    ("POST", "/tokenize", {"text": "hi"}),
    ("POST", "/detokenize", {"ids": [1]}),
    ("POST", "/next-token-probs", {"prompt": "hi", "top_k": 1}),
    ("POST", "/generate", {"prompt": "hi", "max_new_tokens": 1}),
    ("POST", "/classify-digit", {"pixels": PIXELS}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1, "temperature": 0}),
    (
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0},
    ),
    ("GET", "/v2/models/mnist", None),
    ("POST", "/v2/models/mnist/infer", OIP_BODY),
]


@pytest.fixture(scope="module")
async def secured_app(make_app: Callable[[Settings], Awaitable[FastAPI]], settings: Settings) -> FastAPI:
    return await make_app(settings.model_copy(update={"api_keys": KEYS, "cors_origins": [ALLOWED_ORIGIN]}))


@pytest.fixture(scope="module")
async def secured(secured_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=secured_app), base_url="http://test", timeout=120
    ) as http:
        yield http


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("method", "path", "body"), MODEL_ROUTES, ids=[f"{m} {p}" for m, p, _ in MODEL_ROUTES])
async def test_model_routes_need_a_valid_key(secured: httpx.AsyncClient, method: str, path: str, body: object) -> None:
    for headers in (
        {},
        _bearer("wrong"),
        _bearer("key-one-and-more"),
        {"Authorization": "Basic a2V5LW9uZTo="},
        {"Authorization": "key-one"},
    ):
        response = await secured.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["x-request-id"]
        error = response.json()["error"]
        message = error if path.startswith("/v2") else error["message"]  # /v2 speaks the OIP error shape
        assert "API key" in message
        if not path.startswith("/v2"):
            assert error["type"] == "authentication_error"
    for key in KEYS:
        response = await secured.request(method, path, json=body, headers=_bearer(key))
        assert response.status_code == 200, response.text


async def test_every_other_route_in_the_schema_is_protected(secured_app: FastAPI, secured: httpx.AsyncClient) -> None:
    operations = {(m.upper(), p): op for p, ops in secured_app.openapi()["paths"].items() for m, op in ops.items()}
    documented_open = {key for key, op in operations.items() if not op.get("security")}
    assert documented_open == OPEN, "a route is open that should need a key, or the reverse: update OPEN deliberately"
    assert {(m, p) for m, p, _ in MODEL_ROUTES} <= {(m, p.format(**PATH_VALUES)) for m, p in operations}
    for (method, path), _op in sorted(operations.items()):
        url = path.format(**PATH_VALUES)
        response = await secured.request(method, url, json={} if method == "POST" else None)
        if (method, path) in OPEN:
            assert response.status_code != 401, url
        else:
            assert response.status_code == 401, (method, url, response.status_code)


@pytest.mark.parametrize(
    "path",
    [
        "/health",
        "/ready",
        "/info",
        "/metrics",
        "/",
        "/docs",
        "/openapi.json",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/mnist/ready",
        "/v2",
    ],
)
async def test_probes_page_and_docs_stay_open(secured: httpx.AsyncClient, path: str) -> None:
    response = await secured.get(path)
    assert response.status_code == 200, (path, response.text[:200])


async def test_static_files_stay_open(secured: httpx.AsyncClient) -> None:
    page = (await secured.get("/")).text
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page
        assert (await secured.get(asset)).status_code == 200


async def test_info_masks_the_keys(secured: httpx.AsyncClient) -> None:
    text = (await secured.get("/info")).text
    assert "key-one" not in text and "key-two" not in text


async def test_openai_client_with_and_without_key(secured_app: FastAPI) -> None:
    openai = pytest.importorskip("openai")
    openai_httpx: types.ModuleType
    try:
        import httpx2 as openai_httpx
    except ImportError:  # pragma: no cover
        openai_httpx = httpx
    http = openai_httpx.AsyncClient(
        transport=openai_httpx.ASGITransport(app=secured_app), base_url="http://test", timeout=120
    )
    good = openai.AsyncOpenAI(api_key="key-two", base_url="http://test/v1", http_client=http, max_retries=0)
    models = await good.models.list()
    assert len(models.data) == 1
    bad = openai.AsyncOpenAI(api_key="nope", base_url="http://test/v1", http_client=http, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await http.aclose()


def test_key_matching() -> None:
    assert key_matches("key-one", KEYS) and key_matches("key-two", KEYS)
    for attempt in ("", "key", "key-one ", "KEY-ONE", "key-onekey-two", "key-three"):
        assert not key_matches(attempt, KEYS)
    assert not key_matches("anything", [])


async def test_no_keys_configured_means_open(client: httpx.AsyncClient) -> None:
    assert (await client.post("/tokenize", json={"text": "hi"})).status_code == 200


# ---- CORS ------------------------------------------------------------------------------------------


async def test_preflight_from_an_allowed_origin_needs_no_key(secured: httpx.AsyncClient) -> None:
    response = await secured.options(
        "/v1/chat/completions",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    metrics = (await secured.get("/metrics")).text
    assert 'genai_http_requests_total{method="OPTIONS",route="cors-preflight",status="200"}' in metrics


async def test_cors_headers_on_allowed_origin_only(secured: httpx.AsyncClient) -> None:
    allowed = await secured.post(
        "/tokenize", json={"text": "hi"}, headers={"Origin": ALLOWED_ORIGIN, **_bearer("key-one")}
    )
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-request-id" in allowed.headers["access-control-expose-headers"].lower()
    other = await secured.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = await secured.options(
        "/tokenize", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers


async def test_no_cors_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Origin": ALLOWED_ORIGIN})
    assert "access-control-allow-origin" not in response.headers
