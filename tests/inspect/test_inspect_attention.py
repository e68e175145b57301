"""/inspect/attention: each layer's and head's softmax weights, causal and normalised, equal to
transformers' `output_attentions=True` with eager attention for the lean decoder (the embedded model,
the tiny Llama's grouped-query attention) and for transformers' forward (the tiny GPT-2, the embedded
model with GENAI_LEAN_DECODER=false)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import torch
from inspect_helpers import FORWARD, REFERENCE, SERVED, run

from service.inspect.forward import inspector_for

PROMPT = "The capital of France is"


@pytest.mark.parametrize("name", SERVED)
async def test_weights_equal_transformers_eager_attention(
    served: dict[str, httpx.AsyncClient], references: dict[str, Any], name: str
) -> None:
    response = await served[name].post("/inspect/attention", json={"prompt": PROMPT})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["forward"] == FORWARD[name]
    ids = [t["id"] for t in body["prompt_tokens"]]
    expected = run(references[REFERENCE[name]], ids).attentions  # layers of [1, heads, S, S]
    layers, heads = len(expected), expected[0].shape[1]
    assert body["query_positions"] == list(range(len(ids))) and body["heads"] == list(range(heads))
    assert [(m["layer"], m["head"]) for m in body["maps"]] == [
        (layer, head) for layer in range(layers) for head in range(heads)
    ]
    for attention_map in body["maps"]:
        want = expected[attention_map["layer"]][0, attention_map["head"]]  # [S, S]
        assert float(want.triu(1).abs().max()) == 0  # the reference attends to no later position either
        for query, row in zip(body["query_positions"], attention_map["weights"], strict=True):
            assert len(row) == query + 1  # nothing after the query position
            assert sum(row) == pytest.approx(1.0, abs=1e-5)
            assert row == pytest.approx(want[query, : query + 1].tolist(), abs=1e-4)


async def test_model_side_weights_are_causal_tensors(language_model: Any) -> None:
    """The lean decoder's trace holds full [heads, S, S] maps: exactly zero above the diagonal, rows summing to 1."""
    ids = language_model.encode(PROMPT)
    with torch.inference_mode():
        weights = inspector_for(language_model, lean=True).attention(ids, {0, 29})
    for layer in (0, 29):
        assert weights[layer].shape == (9, len(ids), len(ids))
        assert float(weights[layer].triu(1).abs().max()) == 0
        assert torch.allclose(weights[layer].sum(-1), torch.ones(9, len(ids)), atol=1e-5)


async def test_selection_and_mean_over_heads(
    client: httpx.AsyncClient, generic_client: httpx.AsyncClient, language_model: Any
) -> None:
    base = {"prompt": PROMPT, "layers": [2, -1], "heads": [0, 3, -1], "query_positions": [-1, 1]}
    chosen = (await client.post("/inspect/attention", json=base)).json()
    assert chosen["query_positions"] == [4, 1] and chosen["heads"] == [0, 3, 8]
    assert [(m["layer"], m["head"]) for m in chosen["maps"]] == [(2, 0), (2, 3), (2, 8), (29, 0), (29, 3), (29, 8)]
    assert [len(row) for row in chosen["maps"][0]["weights"]] == [5, 2]
    mean = (await client.post("/inspect/attention", json={**base, "mean_over_heads": True})).json()
    assert mean["mean_over_heads"] and [(m["layer"], m["head"]) for m in mean["maps"]] == [(2, None), (29, None)]
    for index, averaged in enumerate(mean["maps"]):
        per_head = chosen["maps"][3 * index : 3 * index + 3]
        for q, row in enumerate(averaged["weights"]):
            assert row == pytest.approx(
                [sum(col) / 3 for col in zip(*(m["weights"][q] for m in per_head), strict=True)], abs=1e-6
            )
    # transformers' forward switched to eager attention for that call only, and back.
    before = language_model.model.config._attn_implementation
    assert (await generic_client.post("/inspect/attention", json=base)).status_code == 200
    assert language_model.model.config._attn_implementation == before == "sdpa"


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": PROMPT, "layers": [30]}, "layers"),
    ({"prompt": PROMPT, "layers": [-31]}, "layers"),
    ({"prompt": PROMPT, "heads": [9]}, "heads"),
    ({"prompt": PROMPT, "heads": []}, "heads"),
    ({"prompt": PROMPT, "query_positions": [5]}, "query_positions"),
    ({"prompt": PROMPT, "mean_over_heads": 1}, "mean_over_heads"),
    ({"prompt": PROMPT, "layers": [0.5]}, "layers.0"),
]


@pytest.mark.parametrize(("body", "field"), REFUSED, ids=[f"{f}={b.get(f.split('.')[0])!r}" for b, f in REFUSED])
async def test_bad_input_is_a_422_naming_the_field(client: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    response = await client.post("/inspect/attention", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == field


async def test_too_many_weights_are_refused_naming_the_setting(small_limits_client: httpx.AsyncClient) -> None:
    response = await small_limits_client.post("/inspect/attention", json={"prompt": PROMPT, "layers": [0]})
    error = response.json()["error"]  # 9 heads × (1 + 2 + 3 + 4 + 5) = 135 > 100
    assert response.status_code == 422 and error["param"] == "query_positions"
    assert "GENAI_INSPECT_MAX_ATTENTION_WEIGHTS" in error["message"] and "135" in error["message"]
    fits = await small_limits_client.post(
        "/inspect/attention", json={"prompt": PROMPT, "layers": [0], "mean_over_heads": True}
    )
    assert fits.status_code == 200 and len(fits.json()["maps"]) == 1
