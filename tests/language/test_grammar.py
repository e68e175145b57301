"""Structured output on /generate with the embedded model (float32 app) and llguidance: `json_schema`,
`regex` and `choice` hold for seeded samples and greedy alike, streamed or not; rows without a
constraint in the same batch are token for token what they are alone; the explain trace shows the
grammar's stage; a constraint that cannot be compiled is a 422 naming the field."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import jsonschema
import pytest
from sse import parse_sse

VOCAB = 49152
MESSAGES = [{"role": "user", "content": "Describe a fictional person as JSON: name, age, role, scores and address."}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "scores": {
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.5},
            "minItems": 1,
            "maxItems": 3,
        },
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "scores", "address"],
    "additionalProperties": False,
}
REGEX = r"[A-Z][a-z]{1,8}, [0-9]{2}"
CHOICES = [" Paris", " London", " Berlin", " Madrid"]
COLOURS = [" red", " green", " blue", " yellow"]


async def generate(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def sampled(seed: int, **body: Any) -> dict[str, Any]:
    return {"do_sample": True, "temperature": 1.0, "seed": seed, **body}


@pytest.mark.slow
async def test_fifty_seeded_samples_keep_a_nested_json_schema(client: httpx.AsyncClient) -> None:
    bodies = [sampled(seed, messages=MESSAGES, json_schema=SCHEMA, max_new_tokens=256) for seed in range(50)]
    answers: list[dict[str, Any]] = []
    for wave in range(0, len(bodies), 16):  # a batch at a time: no request waits out its time limit in the queue
        answers += await asyncio.gather(*(generate(client, **body) for body in bodies[wave : wave + 16]))
    for answer in answers:
        assert answer["finish_reason"] == "stop", answer  # the value is whole: the grammar ended the text
        jsonschema.validate(json.loads(answer["text"]), SCHEMA)
    assert len({answer["text"] for answer in answers}) >= 40  # sampled: nearly all different
    again = await generate(client, **bodies[7])
    assert again["ids"] == answers[7]["ids"]  # seeded: the same text again


async def test_greedy_json_streams_the_text_it_answers(client: httpx.AsyncClient) -> None:
    body = {"messages": MESSAGES, "json_schema": SCHEMA, "max_new_tokens": 256}
    whole = await generate(client, **body)
    jsonschema.validate(json.loads(whole["text"]), SCHEMA)
    response = await client.post("/generate", json={**body, "stream": True})
    assert response.status_code == 200
    events = parse_sse(response.text)
    tokens = [data for name, data in events if name == "token"]
    (done,) = [data for name, data in events if name == "done"]
    assert "".join(t["text"] for t in tokens) == done["text"] == whole["text"]
    assert [t["id"] for t in tokens] == done["ids"] == whole["ids"]
    assert done["finish_reason"] == whole["finish_reason"] == "stop"


async def test_regex_and_choice_hold_sampled_and_greedy(client: httpx.AsyncClient) -> None:
    prompt = "Write a name and an age, like 'Anna, 34':"
    regex = await asyncio.gather(
        *(generate(client, **sampled(seed, prompt=prompt, regex=REGEX, max_new_tokens=24)) for seed in range(20)),
        generate(client, prompt=prompt, regex=REGEX, max_new_tokens=24),
    )
    for answer in regex:
        assert re.fullmatch(REGEX, answer["text"]), answer["text"]
    assert len({a["text"] for a in regex}) >= 5
    colours = await asyncio.gather(
        *(
            generate(client, **sampled(seed, prompt="My favourite colour is", choice=COLOURS, max_new_tokens=8))
            for seed in range(20)
        )
    )
    assert all(answer["text"] in COLOURS and answer["finish_reason"] == "stop" for answer in colours)
    assert len({a["text"] for a in colours}) >= 2
    greedy = await generate(client, prompt="The capital of France is", choice=CHOICES, max_new_tokens=8)
    assert greedy["text"] == " Paris" and greedy["finish_reason"] == "stop"


async def test_rows_without_a_constraint_are_unchanged_by_constrained_neighbours(client: httpx.AsyncClient) -> None:
    plain: list[dict[str, Any]] = [
        {"prompt": "The capital of France is", "max_new_tokens": 12},
        {"prompt": "Once upon a time", "max_new_tokens": 12, "do_sample": True, "seed": 5, "top_p": 0.9},
        {"messages": MESSAGES, "max_new_tokens": 12, "repetition_penalty": 1.2},
    ]
    constrained: list[dict[str, Any]] = [
        {"messages": MESSAGES, "json_schema": SCHEMA, "max_new_tokens": 40},
        sampled(3, messages=MESSAGES, json_schema=SCHEMA, max_new_tokens=40),
        {"prompt": "Write a name and an age:", "regex": REGEX, "max_new_tokens": 12},
        sampled(4, prompt="The capital of France is", choice=CHOICES, max_new_tokens=6),
    ]
    await generate(client, **constrained[0])  # compiled once: the batch below starts together
    alone = [(await generate(client, **body))["ids"] for body in plain]
    together = await asyncio.gather(*(generate(client, **body) for body in [*constrained, *plain]))
    assert [answer["ids"] for answer in together[len(constrained) :]] == alone


async def test_explain_shows_the_grammar_stage(client: httpx.AsyncClient) -> None:
    answer = await generate(
        client, **sampled(1, messages=MESSAGES, json_schema=SCHEMA, max_new_tokens=3, top_p=0.9, explain=True)
    )
    for step in answer["steps"]:
        stages = step["explain"]["stages"]
        assert [s["name"] for s in stages] == ["model", "grammar", "top_p"]
        model, grammar = stages[0], stages[1]
        assert model["kept"] == VOCAB and 1 <= grammar["kept"] < VOCAB
        assert 0 <= grammar["removed_mass"] < 1
        assert all(c["probability"] > 0 for c in grammar["top"])
    first = answer["steps"][0]["explain"]["stages"][1]
    assert first["top"][0]["token"].startswith("{")  # a JSON object opens with a brace, whatever the model likes
    greedy = await generate(client, prompt="The capital of France is", choice=CHOICES, max_new_tokens=4, explain=True)
    stage = greedy["steps"][0]["explain"]["stages"][1]
    assert (
        stage["name"] == "grammar" and len(CHOICES) <= stage["kept"] < 100
    )  # the cities' first tokens, and their starts
    assert stage["removed_mass"] > 0


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ({"json_schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}, "json_schema", "nonsense"),
        ({"regex": "(unclosed"}, "regex", ""),
        ({"json_schema": {"type": "string"}, "regex": "a+"}, "regex", "at most one"),
        ({"choice": []}, "choice", ""),
        ({"choice": ["a", ""]}, "choice", "empty"),
    ],
)
async def test_constraints_that_cannot_be_used_are_422_naming_the_field(
    client: httpx.AsyncClient, extra: dict[str, Any], field: str, reason: str
) -> None:
    response = await client.post("/generate", json={"prompt": "Hi", "max_new_tokens": 4, **extra})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == field and reason in error["message"]
    ok = await generate(client, prompt="Hi", max_new_tokens=1)  # the service is unharmed
    assert ok["usage"]["completion_tokens"] == 1
