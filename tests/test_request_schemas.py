"""service/schemas.py: one rule for every request body, on every route.

Strict types (a JSON number for a number, a boolean for a boolean), strings that are valid Unicode, and
one range per sampling field shared by the native routes and `/v1`. Each refusal is a 4xx naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

GEN = {"prompt": "The capital of France is", "max_new_tokens": 2}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
COMP = {"prompt": "The capital of France is", "max_tokens": 2, "temperature": 0}
PIXELS = [0] * 783 + [255]

COERCED: list[tuple[str, dict[str, Any], str]] = [
    ("/generate", {**GEN, "max_new_tokens": "4"}, "max_new_tokens"),
    ("/generate", {**GEN, "max_new_tokens": True}, "max_new_tokens"),
    ("/generate", {**GEN, "max_new_tokens": 1.0}, "max_new_tokens"),
    ("/generate", {**GEN, "do_sample": "yes"}, "do_sample"),
    ("/generate", {**GEN, "do_sample": 1}, "do_sample"),
    ("/generate", {**GEN, "temperature": "0.5"}, "temperature"),
    ("/generate", {**GEN, "seed": "7"}, "seed"),
    ("/generate", {**GEN, "stream": "true"}, "stream"),
    ("/detokenize", {"ids": ["1"]}, "ids.0"),
    ("/detokenize", {"ids": [1.0]}, "ids.0"),
    ("/tokenize", {"text": 5}, "text"),
    ("/tokenize", {"text": "x", "add_special_tokens": "false"}, "add_special_tokens"),
    ("/next-token-probs", {"prompt": "x", "top_k": "3"}, "top_k"),
    ("/classify-digit", {"pixels": [str(v) for v in PIXELS]}, "pixels.0"),
    ("/classify-digit", {"pixels": PIXELS, "include_prepared": "yes"}, "include_prepared"),
    ("/v1/completions", {**COMP, "max_tokens": "2"}, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "temperature": "0"}, "temperature"),
    ("/v1/chat/completions", {**CHAT, "logprobs": "true"}, "logprobs"),
    (
        "/v2/models/mnist/infer",
        {"inputs": [{"name": "input", "shape": ["1", "784"], "datatype": "UINT8", "data": PIXELS}]},
        "inputs",
    ),
]


@pytest.mark.parametrize(
    ("route", "body", "param"), COERCED, ids=[f"{r} {p}={str(b.get(p.split('.')[0]))[:12]}" for r, b, p in COERCED]
)
async def test_wrong_json_types_are_refused_not_coerced(
    client: httpx.AsyncClient, route: str, body: dict[str, Any], param: str
) -> None:
    response = await client.post(route, json=body)
    assert response.status_code in (400, 422), response.text
    error = response.json()["error"]
    if route.startswith("/v2"):
        assert param.split(".")[0] in error
    else:
        assert error["param"] == param, error


async def test_integers_still_count_as_numbers(client: httpx.AsyncClient) -> None:
    """Strict is about kinds, not spelling: `1` is a fine temperature, as JSON does not tell 1 from 1.0."""
    response = await client.post("/generate", json={**GEN, "temperature": 1, "top_p": 1, "do_sample": True, "seed": 1})
    assert response.status_code == 200, response.text


SURROGATE = '"a\\ud800b"'  # JSON's spelling of a lone surrogate: valid JSON, not valid Unicode text
SURROGATE_CASES = [
    ("/tokenize", '{"text": %s}', "text"),
    ("/generate", '{"prompt": %s, "max_new_tokens": 2}', "prompt"),
    ("/generate", '{"messages": [{"role": "user", "content": %s}], "max_new_tokens": 2}', "messages.0.content"),
    ("/generate", '{"prompt": "x", "stop": [%s], "max_new_tokens": 2}', "stop"),
    ("/next-token-probs", '{"prompt": %s}', "prompt"),
    ("/v1/completions", '{"prompt": %s, "max_tokens": 2}', "prompt"),
    ("/v1/completions", '{"prompt": "x", "model": %s, "max_tokens": 2}', "model"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": %s}], "max_tokens": 2}', "messages.0.content"),
    (
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": %s}]}], "max_tokens": 2}',
        "messages.0.content",
    ),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "model": %s, "max_tokens": 2}', "model"),
    ("/classify-digit", '{"image": %s}', "image"),
]


@pytest.mark.parametrize(
    ("route", "template", "param"), SURROGATE_CASES, ids=[f"{r} {p}" for r, _, p in SURROGATE_CASES]
)
async def test_a_lone_surrogate_is_a_4xx_naming_the_field(
    client: httpx.AsyncClient, route: str, template: str, param: str
) -> None:
    response = await client.post(route, content=template % SURROGATE, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert "U+D800" in error["message"] and "surrogate" in error["message"]


async def test_a_surrogate_pair_is_text_and_accepted(client: httpx.AsyncClient) -> None:
    """A pair (`\\ud83d\\ude00`) is how JSON spells an emoji: that is valid and must keep working."""
    response = await client.post(
        "/tokenize", content='{"text": "smile \\ud83d\\ude00"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json()["count"] > 1


# ---- one range per field, every route -----------------------------------------------------------

BOUNDS = [
    ("temperature", 100.0, 100.5, -0.1),
    ("top_p", 1.0, 1.5, 0.0),
    ("repetition_penalty", 0.1, 1e-300, 10.5),
    ("timeout_s", 0.01, 1e-9, -1.0),
]
# Each route's smallest valid body with one field set to a value.
ROUTES: dict[str, Callable[[str, float], dict[str, Any]]] = {
    "/generate": lambda field, value: {**GEN, field: value},
    "/v1/completions": lambda field, value: {**COMP, field: value},
    "/v1/chat/completions": lambda field, value: {**CHAT, field: value},
    "/next-token-probs": lambda field, value: {"prompt": "x", field: value},
}


@pytest.mark.parametrize(("field", "edge", "below", "beyond"), BOUNDS, ids=[b[0] for b in BOUNDS])
async def test_every_route_refuses_the_same_out_of_range_values(
    client: httpx.AsyncClient, field: str, edge: float, below: float, beyond: float
) -> None:
    for route, body in ROUTES.items():
        if route == "/next-token-probs" and field != "temperature":
            continue  # the only sampling field it takes
        for value in (below, beyond):
            response = await client.post(route, json=body(field, value))
            assert response.status_code in (400, 422), (route, field, value, response.text)
            assert response.json()["error"]["param"] == field
        if field != "timeout_s":  # an edge timeout of 10 ms may well pass before the first token: 504 is right then
            response = await client.post(route, json=body(field, edge))
            assert response.status_code == 200, (route, field, edge, response.text)


async def test_the_schema_shows_the_bounds(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()["components"]["schemas"]
    for model in ("GenerateRequest", "ChatCompletionRequest", "CompletionRequest"):
        fields = spec[model]["properties"]
        temperature = fields["temperature"]
        number = next(o for o in temperature.get("anyOf", [temperature]) if o.get("type") == "number")
        assert (number["minimum"], number["maximum"]) == (0, 100), model
        penalty = fields["repetition_penalty"]
        assert (penalty["minimum"], penalty["maximum"]) == (0.1, 10), model


async def test_a_timeout_that_passes_before_the_first_token_is_504_not_one_token(
    app: Any, client: httpx.AsyncClient
) -> None:
    """The deadline is checked at admission too: a request whose time ran out in the queue gets no token
    (before, a request admitted after its deadline was prefilled and answered 200 with one token)."""
    import asyncio
    import time

    engine = app.state.models.engine
    busy = asyncio.create_task(engine.run_on_engine_thread(time.sleep, 0.5))  # the engine thread is taken for 0.5 s
    await asyncio.sleep(0.05)
    response = await client.post("/generate", json={**GEN, "timeout_s": 0.1})
    await busy
    assert response.status_code == 504, response.text
    assert response.json()["error"]["type"] == "timeout"
