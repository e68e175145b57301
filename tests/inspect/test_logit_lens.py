"""/inspect/logit-lens: each layer's next-token distribution through the final norm and output layer,
held to transformers' own hidden states, and its last layer to /next-token-probs, for every forward
the service runs a model with."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import torch
from inspect_helpers import FORWARD, REFERENCE, SERVED, lens_logprobs

PROMPT = "The capital of France is"


@pytest.mark.parametrize("name", SERVED)
async def test_the_last_layer_is_next_token_probs(served: dict[str, httpx.AsyncClient], name: str) -> None:
    client = served[name]
    lens = (await client.post("/inspect/logit-lens", json={"prompt": PROMPT, "top_k": 5})).json()
    probs = (await client.post("/next-token-probs", json={"prompt": PROMPT, "top_k": 5})).json()
    assert lens["forward"] == FORWARD[name]
    assert [t["id"] for t in lens["prompt_tokens"]] == (await client.post("/tokenize", json={"text": PROMPT})).json()[
        "ids"
    ]
    (row,) = lens["positions"]
    assert row["position"] == len(lens["prompt_tokens"]) - 1
    assert [cell["layer"] for cell in row["layers"]] == list(range(lens["layers"] + 1))
    last = row["layers"][-1]
    assert [t["id"] for t in last["top"]] == [c["id"] for c in probs["candidates"]]
    for got, want in zip(last["top"], probs["candidates"], strict=True):
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)
        assert got["token"] == want["token"]
    assert last["final_token_rank"] == 1
    assert row["final_token"]["id"] == probs["candidates"][0]["id"]


@pytest.mark.parametrize("name", SERVED)
async def test_every_layer_matches_transformers_hidden_states(
    served: dict[str, httpx.AsyncClient], references: dict[str, Any], name: str
) -> None:
    body = {"prompt": "Hello, world! Hello again", "top_k": 4, "positions": [0, -3, -1]}
    lens = (await served[name].post("/inspect/logit-lens", json=body)).json()
    ids = [t["id"] for t in lens["prompt_tokens"]]
    assert [row["position"] for row in lens["positions"]] == [0, len(ids) - 3, len(ids) - 1]
    model = references[REFERENCE[name]]
    for row in lens["positions"]:
        expected = lens_logprobs(model, ids, row["position"])  # [layers + 1, model vocab]
        final = row["final_token"]["id"]
        assert float(expected[-1, final]) >= float(expected[-1].max()) - 1e-5  # the model's top (up to float32 ties)
        assert row["token"] == lens["prompt_tokens"][row["position"]]["token"]
        for cell in row["layers"]:
            want = expected[cell["layer"]]
            # The listed tokens are the reference's top 4 (tokens tied within float32 noise may swap).
            assert [float(want[t["id"]]) for t in cell["top"]] == pytest.approx(
                torch.topk(want, 4).values.tolist(), abs=1e-4
            )
            for token in cell["top"]:
                assert token["probability"] == pytest.approx(float(want[token["id"]].exp()), abs=1e-4)
                assert token["logprob"] == pytest.approx(float(want[token["id"]]), abs=1e-4)
            assert cell["entropy"] == pytest.approx(float(-(want.exp() * want).sum()), abs=1e-4)
            # The rank of the final token, up to tokens within float32 noise of it.
            assert (
                1 + int((want > want[final] + 1e-4).sum())
                <= cell["final_token_rank"]
                <= int((want > want[final] - 1e-4).sum())
            )


async def test_layer_choice_and_embeddings(client: httpx.AsyncClient) -> None:
    everything = (await client.post("/inspect/logit-lens", json={"prompt": PROMPT, "top_k": 2})).json()
    layers = everything["layers"]
    chosen = (
        await client.post("/inspect/logit-lens", json={"prompt": PROMPT, "top_k": 2, "layers": [0, 10, -1]})
    ).json()
    assert [c["layer"] for c in chosen["positions"][0]["layers"]] == [0, 10, layers]
    by_layer = {c["layer"]: c for c in everything["positions"][0]["layers"]}
    for cell in chosen["positions"][0]["layers"]:
        same = by_layer[cell["layer"]]
        assert [t["id"] for t in cell["top"]] == [t["id"] for t in same["top"]]
        assert [t["probability"] for t in cell["top"]] == pytest.approx(
            [t["probability"] for t in same["top"]], abs=1e-6
        )
        assert cell["final_token_rank"] == by_layer[cell["layer"]]["final_token_rank"]
    # Without the last layer asked for, the final token is still the model's own.
    middle = (await client.post("/inspect/logit-lens", json={"prompt": PROMPT, "top_k": 2, "layers": [5]})).json()
    assert middle["positions"][0]["final_token"]["id"] == everything["positions"][0]["final_token"]["id"]
    assert [c["layer"] for c in middle["positions"][0]["layers"]] == [5]
    no_embeddings = (
        await client.post("/inspect/logit-lens", json={"prompt": PROMPT, "top_k": 2, "include_embeddings": False})
    ).json()
    assert [c["layer"] for c in no_embeddings["positions"][0]["layers"]] == list(range(1, layers + 1))


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": PROMPT, "positions": [5]}, "positions"),
    ({"prompt": PROMPT, "positions": [-6]}, "positions"),
    ({"prompt": PROMPT, "positions": []}, "positions"),
    ({"prompt": PROMPT, "layers": [31]}, "layers"),
    ({"prompt": PROMPT, "layers": []}, "layers"),
    ({"prompt": PROMPT, "layers": [0], "include_embeddings": False}, "layers"),
    ({"prompt": PROMPT, "top_k": 0}, "top_k"),
    ({"prompt": PROMPT, "top_k": 101}, "top_k"),
    ({"prompt": PROMPT, "top_k": "3"}, "top_k"),
    ({"prompt": PROMPT, "temperature": 1}, "temperature"),
]


@pytest.mark.parametrize(("body", "field"), REFUSED, ids=[f"{f}={b.get(f)!r}" for b, f in REFUSED])
async def test_bad_input_is_a_422_naming_the_field(client: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    response = await client.post("/inspect/logit-lens", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == field


async def test_the_limits_are_refused_naming_the_setting(small_limits_client: httpx.AsyncClient) -> None:
    long_prompt = "one two three four five six seven eight nine ten eleven twelve thirteen"
    response = await small_limits_client.post("/inspect/logit-lens", json={"prompt": long_prompt})
    error = response.json()["error"]
    assert (
        response.status_code == 422
        and error["param"] == "prompt"
        and "GENAI_INSPECT_MAX_PROMPT_TOKENS" in error["message"]
    )
    response = await small_limits_client.post(
        "/inspect/logit-lens", json={"prompt": PROMPT, "top_k": 2, "positions": [0, 1]}
    )
    error = response.json()["error"]  # 2 positions × 31 layers × 2 > 40
    assert (
        response.status_code == 422
        and error["param"] == "positions"
        and "GENAI_INSPECT_MAX_LENS_ENTRIES" in error["message"]
    )
    fits = await small_limits_client.post("/inspect/logit-lens", json={"prompt": PROMPT, "top_k": 2, "layers": [0, 30]})
    assert fits.status_code == 200
    response = await small_limits_client.post(
        "/inspect/logit-lens", json={"prompt": PROMPT, "top_k": 11, "layers": [0]}
    )
    error = response.json()["error"]
    assert response.status_code == 422 and error["param"] == "top_k" and "GENAI_MAX_TOP_K" in error["message"]
