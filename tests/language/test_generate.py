"""/generate: greedy equals transformers' own generate, batched equals alone, seeds repeat, limits hold."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import torch
from sse import parse_sse

from service.language.model import LanguageModel

# Different lengths on purpose: the batch pads them differently.
PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "Hello",
    "The quick brown fox jumps over the lazy dog because it was tired of",
    "1, 2, 3, 4,",
    "Water boils at",
    "In 1492, Columbus sailed across the Atlantic Ocean and",
]


def reference_greedy(language_model: LanguageModel, prompt: str, new_tokens: int) -> list[int]:
    ids = torch.tensor([language_model.encode(prompt)])
    with torch.inference_mode():
        out = language_model.module().generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=language_model.tokenizer.pad_token_id,
        )
    return [int(token) for token in out[0, ids.shape[1] :].tolist()]


async def test_greedy_generation_equals_model_generate(
    client: httpx.AsyncClient, language_model: LanguageModel
) -> None:
    response = await client.post("/generate", json={"prompt": PROMPTS[0], "max_new_tokens": 12})
    assert response.status_code == 200
    body = response.json()
    assert body["ids"] == reference_greedy(language_model, PROMPTS[0], 12)
    assert body["text"] == language_model.detokenize(body["ids"], skip_special_tokens=True)
    assert body["text"].startswith(" Paris")
    assert body["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}
    assert body["timing"]["total_seconds"] >= body["timing"]["time_to_first_token_seconds"] > 0


async def test_eight_concurrent_greedy_requests_equal_each_alone_and_model_generate(
    client: httpx.AsyncClient, language_model: LanguageModel
) -> None:
    new_tokens = 16

    def request(prompt: str) -> dict[str, Any]:
        return {"prompt": prompt, "max_new_tokens": new_tokens, "ignore_eos": True}

    together = await asyncio.gather(*(client.post("/generate", json=request(p)) for p in PROMPTS))
    for prompt, response in zip(PROMPTS, together, strict=True):
        batched = response.json()["ids"]
        alone = (await client.post("/generate", json=request(prompt))).json()["ids"]
        assert batched == alone, prompt
        reference = reference_greedy(language_model, prompt, new_tokens)
        assert batched[: len(reference)] == reference, prompt


async def test_seeded_sampling_repeats_whatever_shares_the_batch(client: httpx.AsyncClient) -> None:
    request = {
        "prompt": "Once upon a time",
        "max_new_tokens": 20,
        "do_sample": True,
        "temperature": 0.9,
        "top_p": 0.95,
        "seed": 1234,
        "ignore_eos": True,
    }
    first = (await client.post("/generate", json=request)).json()
    second = (await client.post("/generate", json=request)).json()
    assert first["ids"] == second["ids"]
    crowd = [{**request, "prompt": p, "seed": i} for i, p in enumerate(PROMPTS[2:6])]
    results = await asyncio.gather(*(client.post("/generate", json=r) for r in [request, *crowd]))
    assert results[0].json()["ids"] == first["ids"]
    other_seed = (await client.post("/generate", json={**request, "seed": 99})).json()
    assert other_seed["ids"] != first["ids"]


async def test_top_alternatives_show_each_step(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/generate", json={"prompt": "The capital of France is", "max_new_tokens": 4, "top_alternatives": 3}
    )
    body = response.json()
    assert len(body["steps"]) == 4
    for step, token_id in zip(body["steps"], body["ids"], strict=True):
        assert step["id"] == token_id
        alternatives = step["alternatives"]
        assert len(alternatives) == 3
        assert alternatives[0]["id"] == token_id  # greedy picks the most likely
        assert alternatives[0]["probability"] == pytest.approx(step["probability"])
        probabilities = [a["probability"] for a in alternatives]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    assert body["steps"][0]["token"] == " Paris"


async def test_chat_messages_use_the_chat_template(client: httpx.AsyncClient, language_model: LanguageModel) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = (await client.post("/generate", json={"messages": messages, "max_new_tokens": 12})).json()
    rendered = language_model.render_chat(messages)
    raw = (await client.post("/generate", json={"prompt": rendered, "max_new_tokens": 12})).json()
    assert chat["ids"] == raw["ids"]
    assert "Paris" in chat["text"]


async def test_stop_sequences_end_the_text_before_them(client: httpx.AsyncClient) -> None:
    free = (await client.post("/generate", json={"prompt": "1, 2, 3, 4,", "max_new_tokens": 12})).json()
    assert " 7," in free["text"]
    stopped = (
        await client.post("/generate", json={"prompt": "1, 2, 3, 4,", "max_new_tokens": 12, "stop": [" 7"]})
    ).json()
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == free["text"][: free["text"].index(" 7")]


async def test_eos_ends_generation_unless_ignored(client: httpx.AsyncClient, language_model: LanguageModel) -> None:
    messages = [{"role": "user", "content": "Say just the word yes."}]
    ended = (await client.post("/generate", json={"messages": messages, "max_new_tokens": 40})).json()
    assert ended["finish_reason"] == "eos"
    assert ended["ids"][-1] in language_model.eos_token_ids
    forced = (
        await client.post("/generate", json={"messages": messages, "max_new_tokens": 40, "ignore_eos": True})
    ).json()
    assert forced["finish_reason"] == "length" and forced["usage"]["completion_tokens"] == 40


async def test_streaming_sends_each_token_then_done(client: httpx.AsyncClient) -> None:
    request = {"prompt": "The capital of France is", "max_new_tokens": 6, "stream": True, "top_alternatives": 2}
    async with client.stream("POST", "/generate", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = (await response.aread()).decode()
    events = parse_sse(raw)
    tokens = [data for name, data in events if name == "token"]
    done = [data for name, data in events if name == "done"]
    assert len(tokens) == 6 and len(done) == 1
    assert [t["index"] for t in tokens] == list(range(6))
    assert "".join(t["text"] for t in tokens) == done[0]["text"]
    assert [t["id"] for t in tokens] == done[0]["ids"]
    assert all(len(t["alternatives"]) == 2 for t in tokens)
    assert done[0]["finish_reason"] == "length" and done[0]["usage"]["completion_tokens"] == 6
    plain = (await client.post("/generate", json={**request, "stream": False})).json()
    assert plain["ids"] == done[0]["ids"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 513}, "max_new_tokens"),
        ({"prompt": "x", "temperature": -0.5}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "top_k": -1}, "top_k"),
        ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
        ({"prompt": "x", "seed": -3}, "seed"),
        ({"prompt": "x", "top_alternatives": 21}, "top_alternatives"),
        ({"prompt": "x", "stop": ["a"] * 9}, "stop"),
        ({"prompt": "x", "stop": [""]}, "stop"),
        ({"prompt": ""}, "prompt"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "hi"}]}, "body"),
        ({"max_new_tokens": 3}, "body"),
        ({"prompt": "x", "max_new_tokens": "many"}, "max_new_tokens"),
    ],
)
async def test_bad_generation_requests_get_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], param: str
) -> None:
    response = await client.post("/generate", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]


async def test_malformed_json_and_wrong_body_type_get_422(client: httpx.AsyncClient) -> None:
    for raw in (b"{not json", b"[1, 2]", b'"a string"', b""):
        response = await client.post("/generate", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, raw
        assert "error" in response.json()
    # ... and the service goes on serving.
    assert (await client.post("/generate", json={"prompt": "Hi", "max_new_tokens": 1})).status_code == 200
