"""Structured output through the `openai` package: `response_format` (`json_schema`, `json_object`) on chat
and completions, the SDK's `parse` with a pydantic model, vLLM's `guided_*` extensions, streams that
give the text the whole answer gives, and 400s naming the field for what cannot be used."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "country": {"type": "string", "maxLength": 30},
        "population_millions": {"type": "number", "minimum": 0},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    },
    "required": ["city", "country", "population_millions", "landmarks"],
    "additionalProperties": False,
}
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Describe the capital of France as JSON."}]
FORMAT: ResponseFormatJSONSchema = {"type": "json_schema", "json_schema": {"name": "capital", "schema": SCHEMA}}


class Capital(BaseModel):
    city: str
    country: str
    kind: Literal["capital", "town"]


async def test_chat_response_format_json_schema(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    greedy = await aclient.chat.completions.create(
        model=model_id,
        messages=QUESTION,
        response_format=FORMAT,
        max_tokens=200,
        temperature=0,
    )
    content = greedy.choices[0].message.content
    assert content is not None and greedy.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(content), SCHEMA)
    sampled = await aclient.chat.completions.create(
        model=model_id,
        messages=QUESTION,
        response_format=FORMAT,
        max_tokens=200,
        seed=11,
        n=4,
    )
    for choice in sampled.choices:
        assert choice.message.content is not None
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


async def test_the_sdk_parses_into_a_pydantic_model(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    parsed = await aclient.chat.completions.parse(
        model=model_id, messages=QUESTION, response_format=Capital, max_tokens=80, temperature=0
    )
    capital = parsed.choices[0].message.parsed
    assert isinstance(capital, Capital) and capital.kind in ("capital", "town")


async def test_streamed_json_is_the_whole_answer(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    args: dict[str, Any] = {"model": model_id, "messages": QUESTION, "response_format": FORMAT, "max_tokens": 200}
    whole = await aclient.chat.completions.create(**args, temperature=0)
    stream = await aclient.chat.completions.create(**args, temperature=0, stream=True)
    parts, reasons = [], []
    async for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(parts) == whole.choices[0].message.content
    assert reasons[-1] == "stop"


async def test_json_object_on_chat_and_completions(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    chat = await aclient.chat.completions.create(
        model=model_id, messages=QUESTION, response_format={"type": "json_object"}, max_tokens=120, temperature=0
    )
    assert isinstance(json.loads(chat.choices[0].message.content or ""), dict)
    completion = await aclient.completions.create(
        model=model_id,
        prompt="A JSON object describing Paris:",
        max_tokens=120,
        temperature=0,
        extra_body={"response_format": {"type": "json_object"}},
    )
    assert isinstance(json.loads(completion.choices[0].text), dict)
    assert completion.choices[0].finish_reason == "stop"


async def test_guided_extensions(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    regex = r"[A-Z][a-z]{1,12} [0-9]{4}"
    completion = await aclient.completions.create(
        model=model_id,
        prompt="A city and a year:",
        max_tokens=16,
        seed=3,
        n=3,
        extra_body={"guided_regex": regex},
    )
    assert all(re.fullmatch(regex, choice.text) for choice in completion.choices)
    chat = await aclient.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Is Paris in France? Answer yes or no."}],
        max_tokens=4,
        temperature=0,
        extra_body={"guided_choice": ["yes", "no"]},
    )
    assert chat.choices[0].message.content in ("yes", "no")
    guided = await aclient.chat.completions.create(
        model=model_id, messages=QUESTION, max_tokens=200, temperature=0, extra_body={"guided_json": json.dumps(SCHEMA)}
    )
    jsonschema.validate(json.loads(guided.choices[0].message.content or ""), SCHEMA)


CHAT = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4}


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        (
            "/v1/chat/completions",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
            "response_format.json_schema.schema",
        ),
        ("/v1/chat/completions", {"response_format": {"type": "json_schema"}}, "response_format"),
        (
            "/v1/chat/completions",
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
        ),
        ("/v1/completions", {"guided_regex": "(unclosed"}, "guided_regex"),
        ("/v1/completions", {"guided_json": "{not json"}, "guided_json"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}, "guided_choice": ["a"]}, "guided_choice"),
    ],
)
async def test_constraints_that_cannot_be_used_are_400_naming_the_field(
    client: httpx.AsyncClient, path: str, extra: dict[str, Any], param: str
) -> None:
    body = {**CHAT, **extra} if "chat" in path else {"prompt": "x", "max_tokens": 4, **extra}
    response = await client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_the_sdk_raises_a_bad_request_for_a_bad_schema(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await aclient.chat.completions.create(
            model=model_id,
            messages=QUESTION,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
            max_tokens=4,
        )
    assert "response_format.json_schema.schema" in str(bad.value)
