"""/next-token-probs: the model's own distribution, checked against a direct forward pass."""

from __future__ import annotations

import httpx
import pytest
import torch

from service.language.model import LanguageModel


async def test_paris_is_the_most_likely_next_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/next-token-probs", json={"prompt": "The capital of France is", "top_k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["candidates"][0]["token"] == " Paris"
    assert body["prompt_tokens"] == 5
    probabilities = [c["probability"] for c in body["candidates"]]
    assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.parametrize("temperature", [None, 0.7, 2.0])
async def test_matches_a_direct_forward_pass(
    client: httpx.AsyncClient, language_model: LanguageModel, temperature: float
) -> None:
    prompt = "Once upon a time, in a small village,"
    request = {"prompt": prompt, "top_k": 20}
    if temperature is not None:
        request["temperature"] = temperature
    body = (await client.post("/next-token-probs", json=request)).json()
    ids = torch.tensor([language_model.encode(prompt)])
    with torch.inference_mode():
        logits = language_model.module()(ids).logits[0, -1].float()
    expected = torch.softmax(logits / (temperature or 1.0), dim=-1)
    top = torch.topk(expected, 20)
    assert [c["id"] for c in body["candidates"]] == top.indices.tolist()
    for candidate, p in zip(body["candidates"], top.values.tolist(), strict=True):
        assert candidate["probability"] == pytest.approx(p, abs=1e-5)
        assert candidate["logprob"] == pytest.approx(torch.log(torch.tensor(p)).item(), abs=1e-4)


async def test_concurrent_requests_share_batches_and_each_get_their_own_answer(client: httpx.AsyncClient) -> None:
    import asyncio

    prompts = ["The capital of France is", "Two plus two equals", "The opposite of hot is", "Monday, Tuesday,"]
    alone = [(await client.post("/next-token-probs", json={"prompt": p, "top_k": 3})).json() for p in prompts]
    together = await asyncio.gather(
        *(client.post("/next-token-probs", json={"prompt": p, "top_k": 3}) for p in prompts)
    )
    for a, t in zip(alone, together, strict=True):
        t_body = t.json()
        assert [c["id"] for c in a["candidates"]] == [c["id"] for c in t_body["candidates"]]
        for x, y in zip(a["candidates"], t_body["candidates"], strict=True):
            assert x["probability"] == pytest.approx(y["probability"], abs=1e-5)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "top_k": 0}, "top_k"),
        ({"prompt": "x", "top_k": 101}, "top_k"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "temperature": 1e30}, "temperature"),  # /generate's bound holds here too
        ({"prompt": "x", "temperature": 100.5}, "temperature"),
        ({"prompt": ""}, "prompt"),
        ({"top_k": 3}, "prompt"),
    ],
)
async def test_bad_requests_get_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], param: str
) -> None:
    response = await client.post("/next-token-probs", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_temperature_is_refused(client: httpx.AsyncClient, literal: str) -> None:
    raw = f'{{"prompt": "x", "temperature": {literal}}}'
    response = await client.post("/next-token-probs", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "temperature"


async def test_temperature_zero_is_the_greedy_limit(client: httpx.AsyncClient) -> None:
    """0 is greedy on /generate, so here it is the limit of a shrinking temperature: all mass on the top token."""
    response = await client.post(
        "/next-token-probs", json={"prompt": "The capital of France is", "top_k": 2, "temperature": 0}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["temperature"] == 0
    assert body["candidates"][0]["probability"] == pytest.approx(1.0)
    assert body["candidates"][1]["probability"] == pytest.approx(0.0, abs=1e-12)
