"""Tool calls on `/v1/chat/completions` through the `openai` SDK and a LangChain agent: forced calls
(`required`, a named function) whose arguments keep the tool's schema, sampled or greedy, whole or streamed;
`none` and `auto`; a conversation carrying an earlier call and its result; 400s naming the field."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionToolParam,
)
from pydantic import BaseModel, Field

from service.language.grammar import Constraint
from service.language.grammar_llguidance import LLGuidanceBackend
from service.language.model import LanguageModel
from service.openai.tool_calls import ToolReader
from service.openai.tools import ToolDef, ToolUse

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD: dict[str, Any] = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": ADD}},
]
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]


def _check_call(choice: Any, names: set[str]) -> tuple[str, dict[str, Any]]:
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in names
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return call.function.name, arguments


async def test_required_calls_keep_the_schema(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    greedy = await aclient.chat.completions.create(
        model=model_id, messages=QUESTION, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=60
    )
    _check_call(greedy.choices[0], set(SCHEMAS))
    for seed in (1, 2, 3):
        sampled = await aclient.chat.completions.create(
            model=model_id, messages=QUESTION, tools=TOOLS, tool_choice="required", seed=seed, n=3, max_tokens=60
        )
        assert len(sampled.choices) == 3
        for choice in sampled.choices:
            _check_call(choice, set(SCHEMAS))


async def test_a_named_call_is_that_function(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    runs: list[dict[str, Any]] = [{"temperature": 0}, {"seed": 5, "n": 4}, {"seed": 9, "n": 4, "temperature": 1.5}]
    for kwargs in runs:
        response = await aclient.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "What is 2 plus 3?"}],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "add"}},
            max_tokens=40,
            **kwargs,
        )
        for choice in response.choices:
            name, _ = _check_call(choice, {"add"})
            assert name == "add"


async def _streamed_call(aclient: openai.AsyncOpenAI, model_id: str, **kwargs: Any) -> tuple[str, str, str, int]:
    """(name, arguments, finish_reason, chunks with arguments) assembled from a stream's deltas."""
    stream = await aclient.chat.completions.create(model=model_id, messages=QUESTION, stream=True, **kwargs)
    name, arguments, reason, pieces, ids = "", "", "", 0, []
    async for chunk in stream:
        for choice in chunk.choices:
            assert not choice.delta.content
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                if delta.id is not None:
                    ids.append(delta.id)
                    assert delta.type == "function" and delta.function is not None and delta.function.name
                    assert not arguments, "the name comes in the call's first chunk"
                    name = delta.function.name
                if delta.function is not None and delta.function.arguments:
                    arguments += delta.function.arguments
                    pieces += 1
            if choice.finish_reason is not None:
                reason = choice.finish_reason
    assert len(ids) == 1 and ids[0].startswith("call_")
    return name, arguments, reason, pieces


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}], ids=["required", "named"]
)
async def test_a_stream_gives_the_same_call(aclient: openai.AsyncOpenAI, model_id: str, tool_choice: Any) -> None:
    runs: list[dict[str, Any]] = [{"temperature": 0}, {"seed": 4}]
    for kwargs in runs:
        whole = await aclient.chat.completions.create(
            model=model_id, messages=QUESTION, tools=TOOLS, tool_choice=tool_choice, max_tokens=60, **kwargs
        )
        name, arguments = _check_call(whole.choices[0], set(SCHEMAS))
        streamed = await _streamed_call(
            aclient, model_id, tools=TOOLS, tool_choice=tool_choice, max_tokens=60, **kwargs
        )
        assert streamed[:3] == (name, whole.choices[0].message.tool_calls[0].function.arguments, "tool_calls")
        assert json.loads(streamed[1]) == arguments
        assert streamed[3] > 1, "the arguments come in pieces, as they are generated"


async def test_a_call_cut_short_is_length_whole_and_streamed(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    named: ChatCompletionNamedToolChoiceParam = {"type": "function", "function": {"name": "get_weather"}}
    whole = await aclient.chat.completions.create(
        model=model_id, messages=QUESTION, tools=TOOLS, tool_choice=named, temperature=0, max_tokens=3
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "length" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = call.function.arguments
    assert arguments.startswith("{") and not arguments.endswith("}")  # a start of the arguments, not whole
    streamed = await _streamed_call(aclient, model_id, tools=TOOLS, tool_choice=named, temperature=0, max_tokens=3)
    assert streamed[:3] == ("get_weather", arguments, "length")


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str = Field(max_length=20)
    unit: Literal["celsius", "fahrenheit"]


async def test_the_sdk_parses_strict_pydantic_tools(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    """`parse` with `pydantic_function_tool` reads the arguments back into the model; the `stream` helper
    assembles the same call from the deltas."""
    tools = [openai.pydantic_function_tool(GetWeather)]
    parsed = await aclient.chat.completions.parse(
        model=model_id, messages=QUESTION, tools=tools, tool_choice="required", temperature=0, max_tokens=40
    )
    (call,) = parsed.choices[0].message.tool_calls or []
    assert call.function.name == "GetWeather" and isinstance(call.function.parsed_arguments, GetWeather)
    async with aclient.chat.completions.stream(
        model=model_id, messages=QUESTION, tools=tools, tool_choice="required", temperature=0, max_tokens=40
    ) as stream:
        final = await stream.get_final_completion()
    (streamed,) = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert (streamed.function.name, streamed.function.parsed_arguments) == (
        call.function.name,
        call.function.parsed_arguments,
    )


async def test_none_gives_content_and_hides_the_tools(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    plain = await aclient.chat.completions.create(model=model_id, messages=QUESTION, temperature=0, max_tokens=12)
    none = await aclient.chat.completions.create(
        model=model_id, messages=QUESTION, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=12
    )
    auto = await aclient.chat.completions.create(
        model=model_id, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=12
    )
    choice = none.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert choice.message.content == plain.choices[0].message.content and choice.message.content
    assert none.usage is not None and plain.usage is not None and auto.usage is not None
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens + 50  # the tools are shown under `auto`


async def test_auto_streamed_as_answered_whole(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    whole = await aclient.chat.completions.create(
        model=model_id, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=40
    )
    stream = await aclient.chat.completions.create(
        model=model_id, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=40, stream=True
    )
    content, calls, reason = "", [], None
    async for chunk in stream:
        for c in chunk.choices:
            content += c.delta.content or ""
            calls += [(d.function.name, d.function.arguments) for d in c.delta.tool_calls or [] if d.function]
            reason = c.finish_reason or reason
    message = whole.choices[0].message
    assert reason == whole.choices[0].finish_reason
    if message.tool_calls:
        assert reason == "tool_calls" and not content
        assert calls == [(c.function.name, c.function.arguments) for c in message.tool_calls if c.type == "function"]
    else:
        assert content == message.content and not calls


@pytest.fixture(scope="module")
def reader(language_model: LanguageModel) -> ToolReader:
    backend = LLGuidanceBackend(language_model)
    tools = [ToolDef.model_validate(tool) for tool in TOOLS]
    grammars = {t.function.name: backend.compile(Constraint.json_schema(t.function.parameters, "t")) for t in tools}
    return ToolReader(
        ToolUse.of(tools, "auto"), grammars, lambda text: language_model.encode(text, parse_special=False)
    )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>', [("add", '{"a": 2, "b": 3}')]),
        ('{"name": "add", "arguments": {"b": 3, "a": 2}}', [("add", '{"a": 2, "b": 3}')]),  # any key order
        ('<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 1}"}', [("add", '{"a": 1, "b": 1}')]),
        (
            '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}</tool_call>',
            [("add", '{"a": 1, "b": 2}'), ("get_weather", '{"city": "Oslo", "unit": "celsius"}')],
        ),
        ('{"name": "add", "arguments": {"a": "two", "b": 3}}', None),  # not the schema's
        ('{"name": "add", "arguments": {"a": 2}}', None),  # a required argument missing
        ('{"name": "subtract", "arguments": {"a": 2, "b": 3}}', None),  # not an offered tool
        ('Sure! <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>', None),  # not only calls
        ("The weather in Paris is sunny.", None),
        ('{"city": "Paris"}', None),
    ],
)
def test_auto_reads_calls_only_when_valid(reader: ToolReader, answer: str, expected: Any) -> None:
    assert reader.auto_calls(answer) == expected
    content, calls, reason = reader.whole(answer, "stop")
    if expected is None:
        assert (content, calls, reason) == (answer, None, "stop")
    else:
        assert content is None and calls is not None and reason == "tool_calls"
        assert [(c.function.name, c.function.arguments) for c in calls] == expected


async def test_a_conversation_with_a_call_and_its_result(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    call_id = "call_abc123"
    messages: list[ChatCompletionMessageParam] = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    answer = await aclient.chat.completions.create(
        model=model_id, messages=messages, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=24
    )
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None
    without = await aclient.chat.completions.create(
        model=model_id, messages=QUESTION, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=1
    )
    assert answer.usage is not None and without.usage is not None
    assert answer.usage.prompt_tokens > without.usage.prompt_tokens + 20  # the call and its result are rendered


def _body(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **fields}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            _body(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
            "tool_choice.function.name",
        ),
        (_body(tools=[{"type": "function", "function": {"parameters": ADD}}]), "tools.0.function.name"),
        (_body(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools.0.function.name"),
        (_body(tools=[TOOLS[0], {"type": "function", "function": {"name": "get_weather"}}]), "tools.1.function.name"),
        (_body(tools=[{"type": "function"}]), "tools.0.function"),
        (
            _body(tools=[TOOLS[1], {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
            "tools.1.function.parameters",
        ),
        (
            _body(
                tools=[
                    TOOLS[0],
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "minProperties": "x"}},
                    },
                ]
            ),
            "tools.1.function.parameters",
        ),
        (_body(tool_choice="required"), "tool_choice"),
        (_body(tools=TOOLS, tool_choice="always"), "tool_choice"),
        (_body(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), "tool_choice"),
        (_body(messages=[{"role": "tool", "content": "21 degrees"}]), "messages.0"),
        (_body(messages=[{"role": "user", "content": "x", "tool_calls": []}, {"role": "user", "content": "y"}]), None),
    ],
)
async def test_invalid_tools_get_400_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], param: Any
) -> None:
    response = await client.post("/v1/chat/completions", json=body)
    if param is None:  # an empty `tool_calls` list on a user message carries no call: accepted
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


# ---- a LangChain agent -------------------------------------------------------------------------


def test_a_langchain_agent_calls_a_python_function(threaded_server: str, model_id: str) -> None:
    """`ChatOpenAI(...).bind_tools([function])` over a real socket: LangChain parses the forced call into
    `.tool_calls`, the function runs on its arguments, and its result sent back gets a final answer."""
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_core.utils.function_calling import convert_to_openai_tool

    ran: list[dict[str, Any]] = []

    @tool
    def get_weather(city: str, unit: str) -> str:
        """The current weather in a city, in `celsius` or `fahrenheit`."""
        ran.append({"city": city, "unit": unit})
        return json.dumps({"city": city, "temperature": 21, "unit": unit, "sky": "sunny"})

    schema = convert_to_openai_tool(get_weather, strict=True)["function"]["parameters"]
    llm = langchain_openai.ChatOpenAI(
        base_url=f"{threaded_server}/v1", api_key="x", model=model_id, temperature=0, max_tokens=60, max_retries=0
    )
    agent = llm.bind_tools([get_weather], tool_choice="get_weather", strict=True)
    messages: list[BaseMessage] = [HumanMessage("What is the weather in Paris?")]

    called = agent.invoke(messages)
    assert isinstance(called, AIMessage) and len(called.tool_calls) == 1, called
    call = called.tool_calls[0]
    assert call["name"] == "get_weather" and call["id"]
    jsonschema.validate(call["args"], schema)

    streamed = None
    for piece in agent.stream(messages):
        streamed = piece if streamed is None else streamed + piece
    assert streamed is not None and [(c["name"], c["args"]) for c in streamed.tool_calls] == [
        (call["name"], call["args"])
    ]

    result = get_weather.invoke(call)
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    assert ran == [call["args"]]

    final = llm.bind_tools([get_weather], tool_choice="none").invoke([*messages, called, result])
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert isinstance(final.content, str) and final.content.strip()


async def test_the_openapi_example_is_answered_with_a_call(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    (example,) = [e for e in schemas["ChatCompletionRequest"]["examples"] if "tools" in e]
    response = await client.post("/v1/chat/completions", json={**example, "temperature": 0, "max_tokens": 40})
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    (tool,) = example["tools"]
    assert call["function"]["name"] == tool["function"]["name"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])
