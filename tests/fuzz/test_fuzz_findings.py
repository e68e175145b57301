"""What the fuzzing found, pinned by the exact inputs: fixed findings stay fixed, open ones are strict
xfails (they start passing, and so failing here, when fixed: then drop the mark and the matching entry
in `open_finding` in test_openapi_fuzz.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, cast

import pytest
import requests
from fastapi import FastAPI
from PIL import Image


@pytest.fixture(scope="module")
def http(fuzz_app: FastAPI) -> Iterator[requests.Session]:
    """The fuzzed app through schemathesis' in-process client (the same lifespan the fuzzing uses)."""
    from schemathesis.python import asgi

    # cast: schemathesis types ASGI scopes and messages as dict, FastAPI (like the ASGI spec) as MutableMapping.
    with asgi.get_client(cast(asgi.ASGIApp, fuzz_app)) as session:
        yield session


TINY_TEMPERATURES = [5e-324, 1e-300, 1e-45]


@pytest.mark.parametrize("temperature", TINY_TEMPERATURES)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", {"prompt": "Hi", "max_new_tokens": 2, "do_sample": True}),
        ("/generate", {"prompt": "Hi", "max_new_tokens": 2, "do_sample": True, "stream": True}),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    ],
    ids=["generate", "generate-stream", "completions", "chat"],
)
def test_tiny_sampling_temperature_is_greedy_not_a_500(
    http: requests.Session, path: str, body: dict[str, Any], temperature: float
) -> None:
    """Fixed: sampling divided raw logits by the temperature, so a tiny one gave inf - inf = NaN
    probabilities and torch.multinomial raised (500). The limit of temperature -> 0 is greedy."""
    sampled = http.post(path, json={**body, "temperature": temperature}, timeout=60)
    greedy = http.post(
        path,
        json={**body, "temperature": 0, "do_sample": False} if path == "/generate" else {**body, "temperature": 0},
        timeout=60,
    )
    assert sampled.status_code == 200, sampled.text
    assert greedy.status_code == 200, greedy.text
    if not body.get("stream"):
        assert _generated_text(path, sampled.json()) == _generated_text(path, greedy.json())


def _generated_text(path: str, answer: dict[str, Any]) -> object:
    """The generated text, wherever the route at `path` puts it in its answer."""
    if path == "/generate":
        return answer["text"]
    if path == "/v1/completions":
        return answer["choices"][0]["text"]
    return answer["choices"][0]["message"]["content"]


def _png(side: int = 28) -> bytes:
    image = Image.new("L", (side, side), 255)
    image.paste(0, (10, 4, 16, 24))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_too_many_multipart_files_is_422_like_a_too_long_json_batch(http: requests.Session, fuzz_app: FastAPI) -> None:
    """Fixed: Starlette's own multipart limit answered an undocumented 400; a batch too large is 422 in JSON."""
    limit = fuzz_app.state.settings.digits_max_batch
    files = [("file", (f"{i}.png", _png(), "image/png")) for i in range(limit + 1)]
    response = http.post("/classify-digit", files=files, timeout=60)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "file"
    within = http.post("/classify-digit", files=files[:limit], timeout=60)
    assert within.status_code == 200, within.text
    assert len(within.json()["results"]) == limit


def test_malformed_multipart_body_is_422(http: requests.Session) -> None:
    body = b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nabc'  # never closed
    response = http.post(
        "/classify-digit", data=body, headers={"content-type": "multipart/form-data; boundary=XYZ"}, timeout=60
    )
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("temperature", TINY_TEMPERATURES)
def test_next_token_probs_tiny_temperature(http: requests.Session, temperature: float) -> None:
    """Fixed in the engine (b5f1d22): logits / temperature overflowed to NaN probabilities, a 500."""
    response = http.post("/next-token-probs", json={"prompt": "0", "temperature": temperature}, timeout=60)
    assert response.status_code in (200, 422), response.text


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize", "/next-token-probs", "/generate"])
def test_body_that_is_not_utf8_gets_a_documented_status(http: requests.Session, path: str) -> None:
    """Fixed in service/errors.py (b5f1d22): FastAPI's own 400 for an undecodable body was not in the schema."""
    response = http.post(path, data=b"\xff\xfeQ", headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 422, response.text
