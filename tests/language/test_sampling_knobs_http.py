"""The sampler's knobs over HTTP on the native routes (float32 app): `logit_bias`, `presence_penalty`,
`frequency_penalty` and `min_p` on /generate and (with explain) /next-token-probs, visible as stages,
each row its own in a shared batch, and a 422 naming the field for every bad value."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

PROMPT = "The capital of France is"
PARIS = 7042


async def generate(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/generate", json={"prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_logit_bias_bans_and_forces_tokens(client: httpx.AsyncClient) -> None:
    plain = await generate(client, max_new_tokens=2)
    assert plain["ids"][0] == PARIS
    banned = await generate(client, max_new_tokens=2, logit_bias={str(PARIS): -100}, explain=True)
    assert banned["ids"][0] != PARIS
    stages = banned["steps"][0]["explain"]["stages"]
    assert [s["name"] for s in stages] == ["model", "logit_bias"]
    assert stages[0]["top"][0]["id"] == PARIS and PARIS not in [c["id"] for c in stages[1]["top"]]
    assert stages[1]["removed_mass"] == pytest.approx(stages[0]["top"][0]["probability"], abs=0.01)
    assert banned["steps"][0]["probability"] < 0.1  # reported probabilities stay the model's own
    forced = await generate(client, max_new_tokens=3, logit_bias={"504": 100})
    assert forced["ids"] == [504, 504, 504]


async def test_every_knob_is_a_stage_in_order(client: httpx.AsyncClient) -> None:
    knobs = {
        "logit_bias": {str(PARIS): -5, "260": 2},
        "repetition_penalty": 1.2,
        "frequency_penalty": 0.8,
        "presence_penalty": 0.6,
        "temperature": 0.9,
        "min_p": 0.05,
        "top_k": 40,
        "top_p": 0.95,
    }
    answer = await generate(
        client, max_new_tokens=6, do_sample=True, seed=3, explain=True, top_alternatives=20, **knobs
    )
    expected = [
        "model",
        "logit_bias",
        "repetition_penalty",
        "frequency_penalty",
        "presence_penalty",
        "temperature",
        "min_p",
        "top_k",
        "top_p",
    ]
    for index, step in enumerate(answer["steps"]):
        stages = step["explain"]["stages"]
        assert [s["name"] for s in stages] == expected
        by_name = {s["name"]: s for s in stages}
        # penalties count generated tokens only: nothing to count at the first step, something after it
        assert (by_name["frequency_penalty"]["removed_mass"] > 0) == (index > 0)
        assert (by_name["presence_penalty"]["removed_mass"] > 0) == (index > 0)
        # min_p keeps exactly the listed tokens at least min_p times as likely as the likeliest (temperature stage)
        before = by_name["temperature"]["top"]
        threshold = knobs["min_p"] * before[0]["probability"]
        kept_before = [c["id"] for c in before if c["probability"] >= threshold]
        assert [c["id"] for c in by_name["min_p"]["top"]][: len(kept_before)] == kept_before[:20]
        assert by_name["min_p"]["kept"] == len(kept_before) or len(kept_before) == len(before)
        assert by_name["min_p"]["kept"] <= by_name["temperature"]["kept"]
    again = await generate(client, max_new_tokens=6, do_sample=True, seed=3, **knobs)
    assert again["ids"] == answer["ids"]  # seeded: the same text, explained or not


async def test_rows_with_different_knobs_in_one_batch_get_what_they_get_alone(client: httpx.AsyncClient) -> None:
    bodies: list[dict[str, Any]] = [
        {"max_new_tokens": 8},
        {"max_new_tokens": 8, "logit_bias": {str(PARIS): -100}},
        {"max_new_tokens": 8, "do_sample": True, "seed": 9, "min_p": 0.1},
        {"max_new_tokens": 8, "do_sample": True, "seed": 9, "frequency_penalty": 1.5, "presence_penalty": 1.0},
        {"max_new_tokens": 8, "frequency_penalty": 2.0},
    ]
    alone = [(await generate(client, **b))["ids"] for b in bodies]
    together = await asyncio.gather(*(generate(client, **b) for b in bodies))
    assert [a["ids"] for a in together] == alone
    assert len({tuple(ids) for ids in alone}) >= 4


async def test_next_token_stages_show_the_knobs(client: httpx.AsyncClient) -> None:
    body = {
        "prompt": PROMPT,
        "top_k": 5,
        "explain": True,
        "temperature": 1.5,
        "logit_bias": {str(PARIS): -3},
        "min_p": 0.2,
        "presence_penalty": 1.0,
        "frequency_penalty": 1.0,
    }
    response = await client.post("/next-token-probs", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    stages = {s["name"]: s for s in answer["stages"]}
    assert list(stages) == [
        "model",
        "logit_bias",
        "frequency_penalty",
        "presence_penalty",
        "temperature",
        "min_p",
    ]
    assert stages["frequency_penalty"]["removed_mass"] == 0 and stages["presence_penalty"]["removed_mass"] == 0
    assert stages["logit_bias"]["removed_mass"] > 0
    top = stages["temperature"]["top"]
    assert all(c["probability"] >= 0.2 * top[0]["probability"] for c in stages["min_p"]["top"])
    assert answer["candidates"][0]["id"] == PARIS  # the candidates stay the model's, at the temperature
    first = await generate(
        client,
        max_new_tokens=1,
        do_sample=True,
        seed=1,
        explain=True,
        top_alternatives=5,
        temperature=1.5,
        logit_bias={str(PARIS): -3},
        min_p=0.2,
        presence_penalty=1.0,
        frequency_penalty=1.0,
    )
    assert first["steps"][0]["explain"]["stages"] == answer["stages"]  # what a first sampled token sees


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/generate", {"min_p": 1.5}, "min_p"),
        ("/generate", {"min_p": -0.1}, "min_p"),
        ("/generate", {"presence_penalty": 2.5}, "presence_penalty"),
        ("/generate", {"frequency_penalty": -3}, "frequency_penalty"),
        ("/generate", {"frequency_penalty": "1"}, "frequency_penalty"),
        ("/generate", {"logit_bias": {"1": 101}}, "logit_bias.1"),
        ("/generate", {"logit_bias": {"1": -1e9}}, "logit_bias.1"),
        ("/generate", {"logit_bias": {"Paris": 1}}, "logit_bias"),
        ("/generate", {"logit_bias": {"99999999": 1}}, "logit_bias"),
        ("/generate", {"logit_bias": {"-1": 1}}, "logit_bias"),
        ("/generate", {"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        ("/generate", {"logit_bias": [1, 2]}, "logit_bias"),
        ("/next-token-probs", {"min_p": 0.1}, "min_p"),
        ("/next-token-probs", {"logit_bias": {"1": 1}}, "logit_bias"),
        ("/next-token-probs", {"presence_penalty": 1}, "presence_penalty"),
        ("/next-token-probs", {"frequency_penalty": 1}, "frequency_penalty"),
        ("/next-token-probs", {"explain": True, "logit_bias": {"99999999": 1}}, "logit_bias"),
    ],
)
async def test_bad_knobs_get_422_naming_the_field(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    response = await client.post(path, json={"prompt": PROMPT, **body})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


async def test_openapi_shows_the_knobs_and_their_bounds(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    generate_fields = schemas["GenerateRequest"]["properties"]
    for name in ("min_p", "logit_bias", "presence_penalty", "frequency_penalty"):
        assert name in generate_fields and name in schemas["NextTokenRequest"]["properties"]
    assert generate_fields["presence_penalty"]["minimum"] == -2 and generate_fields["presence_penalty"]["maximum"] == 2
    assert generate_fields["min_p"]["maximum"] == 1
